"""The zoo: tiny real models saved the way their libraries save them, analysed end to end
(issue 13, item 7).

Each model of tests/_zoo.py is saved at steps 0, 1, 2 (one real AdamW step between saves)
and analysed; what specdyn stored is checked against the model itself and against the
files read back here, never against specdyn's own expectations:

- every operator weight (`operator_weights`, from `named_modules`) is analysed, located in
  the saved files by value (transformers 5 renames on save);
- every other saved tensor (biases, norms, BN buffers, class tokens) is listed as skipped
  with a reason, or as an alias of a tied weight; nothing is dropped;
- the steps are the saved ones, in order, with the library's step unit;
- the singular values equal float64 LAPACK on the tensors loaded here.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import _zoo  # tests/_zoo.py (tests/ is on sys.path, as for _ckpt_factory)
import numpy as np
import pytest
import safetensors.torch
import torch

import specdyn
from specdyn.store import open_run

pytest.importorskip("transformers")
pytest.importorskip("diffusers")


ROOT = Path(__file__).resolve().parents[2]
STEPS = (0, 1, 2)
# a few run with singular vectors, so that pairs, alignment and agreement run on them too
WITH_VECTORS = {"llama", "t5", "resnet", "unet2d-cond", "lstm"}

# Known gaps in specdyn exposed by the zoo: (model, check) → reason. Marked strict xfail.
GAPS: dict[tuple[str, str], str] = {}


def _params(check: str) -> list:
    """The zoo names, with the known gaps of `check` marked strict xfail."""
    out = []
    for name in _zoo.ZOO:
        reason = GAPS.get((name, check))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@functools.cache
def _analysed(name: str, base: Path) -> dict:
    """Save the trajectory of zoo model `name` under `base` and analyse it (cached per model)."""
    entry = _zoo.ZOO[name]
    root = base / name
    paths = _zoo.save_trajectory(entry, root / "ckpts", STEPS)
    vectors = specdyn.VectorOptions() if name in WITH_VECTORS else None
    result = specdyn.analyze(root / "ckpts", home=root / "home", vectors=vectors)
    return {"entry": entry, "paths": paths, "result": result, "model": entry.build(0)}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def _load(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one saved checkpoint (a file, or a folder of weight files / shards)."""
    files = (
        sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
    )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            tensors.update(safetensors.torch.load_file(str(f)))
        else:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
    assert tensors, f"nothing saved in {path}"
    return tensors


def _store(case: dict):
    """The one run analysed and its store, opened."""
    (run,) = case["result"].runs
    return run, open_run(run.store_path)


# ------------------------------------------------------------------ operator weights


@pytest.mark.parametrize("name", _params("operators"))
def test_every_operator_weight_is_analysed(name, zoo_dir):
    case = _analysed(name, zoo_dir)
    saved = _load(case["paths"][0])
    located = _zoo.saved_operator_keys(case["model"], saved)
    assert located and all(located.values()), f"operators not found in the saved files: {located}"
    _, run = _store(case)
    with run:
        analysed = {run.matrix_info(m)["param"] for m in run.matrices}
        aliases = run.aliases
    for op, keys in located.items():
        # tied weights saved under several names: one is analysed, the others are its aliases
        hits = [k for k in keys if k in analysed]
        assert len(hits) == 1 or (len(hits) > 1 and len(keys) == len(hits)), (op, keys, hits)
        for k in keys:
            assert k in analysed or aliases.get(k) in analysed, f"{op} ({k}) is not analysed"


@pytest.mark.parametrize("name", _params("skipped"))
def test_everything_else_is_skipped_with_a_reason(name, zoo_dir):
    case = _analysed(name, zoo_dir)
    saved = _load(case["paths"][0])
    operator_keys = {
        k for keys in _zoo.saved_operator_keys(case["model"], saved).values() for k in keys
    }
    _, run = _store(case)
    with run:
        analysed = {run.matrix_info(m)["param"] for m in run.matrices}
        skipped_list = run.skipped
        aliases = run.aliases
    skipped = dict(skipped_list)
    assert len(skipped) == len(skipped_list), "a parameter is skipped twice"
    # nothing dropped: every saved tensor is analysed, skipped or an alias of an analysed one
    assert set(saved) == analysed | set(skipped) | set(aliases)
    assert not analysed & set(skipped)
    assert analysed <= operator_keys, (
        f"analysed but no operator: {sorted(analysed - operator_keys)}"
    )
    model_buffers = {n for n, _ in case["model"].named_buffers()}
    for key in set(saved) - operator_keys - set(aliases):
        reason = skipped[key]
        t = saved[key]
        if key in model_buffers:  # BN running stats, position ids: saved under their own names
            assert reason in ("buffer, not a weight", "integer tensor"), (key, reason)
        elif t.is_floating_point() and t.dim() <= 1:
            assert reason == "1-D parameter (bias/norm)", (key, reason)
        else:
            assert reason, key


# ------------------------------------------------------------------ steps


@pytest.mark.parametrize("name", _params("steps"))
def test_steps_are_the_saved_ones_in_order(name, zoo_dir):
    case = _analysed(name, zoo_dir)
    info, run = _store(case)
    with run:
        assert list(run.steps) == list(STEPS)
        assert run.step_unit == case["entry"].step_unit
        sources = [Path(s["source"]).resolve() for s in run.step_sources]
        if name in WITH_VECTORS:
            assert list(run.alignment.steps) == list(STEPS) and run.pairs
            assert list(run.agreement.steps) == list(STEPS)
    assert info.problems == [] and not info.incomplete
    # each step is the checkpoint saved at that step (the saved file, or the file in it)
    for step, path, source in zip(STEPS, case["paths"], sources, strict=True):
        assert source == path.resolve() or path.resolve() in source.parents, (step, path, source)


# ------------------------------------------------------------------ singular values


# The default Gram route loses accuracy on small singular values, |Δσ_i| ≈ η/(2σ_i) with
# η ≈ (k·r + s)·u·σ_1² (docs/methods.md#the-gram-route): ~3e-12·σ_1 at σ_i = 5e-6·σ_1 on the
# zoo's matrices. 1e-9·σ_1 is far below the engine's certified τ·σ_1 and far above that.
_ATOL = 1e-9


def _as_matrix(t: torch.Tensor) -> np.ndarray:
    """(out, in·∏k) of a saved weight in float64 (transposes do not change singular values)."""
    return t.double().reshape(t.shape[0], -1).numpy()


@pytest.mark.parametrize("name", _params("sigma"))
def test_singular_values_equal_lapack(name, zoo_dir):
    case = _analysed(name, zoo_dir)
    saved = _load(case["paths"][1])
    _, run = _store(case)
    checked = 0
    with run:
        for m in run.matrices:
            info = run.matrix_info(m)
            if info["part"]:
                continue  # slices: checked on the timm ViT and the LSTM below
            expected = np.linalg.svd(_as_matrix(saved[info["key"]]), compute_uv=False)
            got = run.sigma(m)[STEPS.index(1)]
            np.testing.assert_allclose(
                got, expected, rtol=1e-9, atol=_ATOL * expected[0], err_msg=m
            )
            checked += 1
    assert checked


def test_slices_equal_lapack_on_fused_qkv_and_lstm_gates(zoo_dir):
    for name, key, blocks in (("vit-timm", "blocks.1.attn.qkv.weight", "qkv"),
                              ("lstm", "lstm.weight_hh_l1", "ifgo")):  # fmt: skip
        case = _analysed(name, zoo_dir)
        w = _as_matrix(_load(case["paths"][2])[key])
        _, run = _store(case)
        with run:
            for i, part in enumerate(blocks):
                rows = w.shape[0] // len(blocks)  # timm: Q | K | V; PyTorch LSTM: i | f | g | o
                expected = np.linalg.svd(w[i * rows : (i + 1) * rows], compute_uv=False)
                got = run.sigma(f"{key}[{part}]")[STEPS.index(2)]
                np.testing.assert_allclose(got, expected, rtol=1e-9, atol=_ATOL * expected[0])


# ------------------------------------------------------------------ docs/architectures.md


def test_architectures_page_is_what_the_script_writes():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_architectures
    finally:
        sys.path.remove(str(ROOT / "docs"))
    page = (ROOT / "docs" / "architectures.md").read_text(encoding="utf-8")
    assert page == make_architectures.render(), (
        "docs/architectures.md is out of date: run .venv/bin/python docs/make_architectures.py"
    )


def test_zoo_configs_are_what_is_saved(zoo_dir):
    # ZooModel.config is the config.json beside the weights (what other tests plan views with)
    for name in ("bert", "whisper", "unet2d-cond", "mlp"):
        case = _analysed(name, zoo_dir)
        expected = case["entry"].config(case["model"])
        path = case["paths"][0]
        on_disk = json.loads((path / "config.json").read_text()) if path.is_dir() else None
        assert on_disk == expected


# ------------------------------------------------------------------ forward order


@pytest.mark.parametrize("name", _params("order"))
def test_matrices_are_listed_in_forward_order(name, zoo_dir):
    # docs/views.md#forward-order: matrices are listed by forward depth. Every operator but
    # the embeddings is listed exactly in the order the model's own forward first uses it
    # (an operator saved under several keys, like Mixtral's stacked experts, at its first).
    # Embeddings read the model's inputs in parallel (summed), so their relative order is a
    # convention: each is only listed no later than the operator the forward runs after it.
    case = _analysed(name, zoo_dir)
    model, entry = case["model"], case["entry"]
    order = _zoo.forward_order(model, entry.inputs(model, torch.Generator().manual_seed(0)))
    located = _zoo.saved_operator_keys(model, _load(case["paths"][0]))
    embeddings = {
        n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)
    }
    _, run = _store(case)
    with run:
        params = list(dict.fromkeys(run.matrix_info(m)["param"] for m in run.matrices))
        aliases = run.aliases
    listed = {p: i for i, p in enumerate(params)}
    listed.update({a: listed[p] for a, p in aliases.items() if p in listed})
    first = {op: min(listed[k] for k in located[op] if k in listed) for op in order}
    body = [op for op in order if op not in embeddings]
    assert sorted(body, key=first.__getitem__) == body, "store order ≠ forward order"
    for i, op in enumerate(order):
        later = [o for o in order[i + 1 :] if o not in embeddings]
        if op in embeddings and later:
            assert first[op] < first[later[0]], (op, later[0])
