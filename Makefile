# The two README commands: `make demo` and `make test`. Both set everything up on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
HOME_DIR ?= specdyn-runs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the local CPU wheel first, so that no multi-GB CUDA build is pulled
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/specdyn demo grokking --home $(HOME_DIR)
	$(VENV)/bin/specdyn analyze fixtures --home $(HOME_DIR)
	$(VENV)/bin/specdyn runs --home $(HOME_DIR)
	$(VENV)/bin/specdyn plot all mlp-wd --home $(HOME_DIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check specdyn tests fixtures benchmarks docs

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check specdyn tests fixtures benchmarks docs
	$(VENV)/bin/ruff format --check specdyn

.PHONY: install demo test lint
