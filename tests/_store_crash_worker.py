"""Writes a store with deterministic data, for the kill -9 tests of tests/store/test_store.py.

    python tests/_store_crash_worker.py STORE '{"known": [0, 10, 20], ...}'

JSON keys: ``known`` (steps passed to StoreWriter.open), ``write`` (steps to
write, default: every pending one), ``stop_after`` (after writing that many
steps, create ``marker`` and wait to be killed), ``marker`` (also created right
after the store is opened when ``stop_after`` is not given), ``big`` (larger
matrices, so that writes take longer), ``overwrite``.

The test hooks of specdyn.store (SPECDYN_TEST_HOLD_WRITE, SPECDYN_TEST_HOLD_REBUILD)
come through the environment. The data of a step depends only on the step, so a
killed and resumed store can be compared with an uninterrupted one; the test
module imports these functions to build its reference in-process.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

SMALL = [
    ("embed_in.weight", 12, 40),
    ("layers.0.attention.query_key_value.weight", 24, 8),
    ("layers.0.attention.query_key_value.weight[q]", 8, 8),
    ("layers.0.mlp.dense_h_to_4h.weight", 32, 8),
    ("layers.10.mlp.dense_4h_to_h.weight", 8, 32),
    ("embed_out.weight", 40, 8),
]
BIG = [(f"layers.{i}.mlp.weight", 256 + 8 * i, 384) for i in range(12)]


def matrix_records(big: bool = False) -> list:
    """The store's matrices."""
    from specdyn.store import MatrixRecord

    return [
        MatrixRecord(
            name=name,
            param=name.split("[")[0],
            key="gpt_neox." + name.split("[")[0],
            kind="qkv_part" if "[" in name else "linear",
            part="q" if "[" in name else None,
            shape=(m, n),
            source_shape=(m * 3, n) if "[" in name else (m, n),
            source_dtype="float16",
        )
        for name, m, n in (BIG if big else SMALL)
    ]


def step_records(steps: list[int]) -> list:
    """Deterministic source records of `steps`."""
    from specdyn.store import StepRecord

    return [
        StepRecord(
            step=s,
            epoch=s // 10,
            source=f"/ckpts/run/step_{s}.pt",
            format="torch",
            size=1000 + s,
            mtime=1.7e9 + s,
            sha256=hashlib.sha256(f"step {s}".encode()).hexdigest(),
        )
        for s in steps
    ]


def step_data(step: int, big: bool = False) -> tuple[dict, dict, list[str]]:
    """(spectra, metrics, notes) of one step: a function of the step only."""
    from specdyn.metrics import spectral_metrics

    spectra, metrics = {}, {}
    for j, (name, m, n) in enumerate(BIG if big else SMALL):
        rng = np.random.default_rng(1000 * step + j)
        sigma = np.sort(rng.random(min(m, n)))[::-1] * (1.0 + step)
        spectra[name] = (sigma, "gram-eigvalsh-f64" if j % 2 else "svdvals-f64")
        metrics[name] = {k: float(v) for k, v in spectral_metrics(sigma).items()}
    notes = [f"step {step}: note ü"] if step % 20 == 0 else []
    return spectra, metrics, notes


def write_store(
    store: Path,
    known: list[int],
    *,
    write: list[int] | None = None,
    stop_after: int | None = None,
    marker: str | None = None,
    big: bool = False,
    overwrite: bool = False,
) -> list[int]:
    """Open the store for `known` steps and write `write` (default: all pending); the
    steps written."""
    from specdyn.store import StoreWriter

    written = []
    with StoreWriter.open(
        store,
        run_name=store.stem,
        source_root="/ckpts/run",
        step_unit="step",
        steps=step_records(known),
        matrices=matrix_records(big),
        skipped=[("embed_in.bias", "1-D parameter"), ("layers.0.attention.bias", "buffer")],
        aliases={"embed_out.weight.tied": "embed_out.weight"},
        options={"precision": "float64", "exact": False, "include": [], "exclude": []},
        provenance={
            "specdyn_version": "test",
            "argv": sys.argv[1:],
            "pid": __import__("os").getpid(),
        },
        overwrite=overwrite,
    ) as writer:
        todo = (
            writer.pending_steps
            if write is None
            else [s for s in write if s in writer.pending_steps]
        )
        if marker and stop_after is None:
            Path(marker).write_text("open")
        for s in todo:
            if stop_after is not None and len(written) == stop_after:
                Path(marker).write_text("between steps")
                time.sleep(600)
            spectra, metrics, notes = step_data(s, big)
            writer.write_step(s, spectra, metrics, notes)
            written.append(s)
    return written


def _import_store_without_torch() -> None:
    """Register the specdyn package without running its __init__ (which imports torch,
    slow to start): the store and what it imports need only numpy and h5py."""
    root = Path(__file__).resolve().parents[1]
    package = types.ModuleType("specdyn")
    package.__path__ = [str(root / "specdyn")]
    sys.modules["specdyn"] = package


if __name__ == "__main__":
    _import_store_without_torch()
    spec = json.loads(sys.argv[2])
    write_store(
        Path(sys.argv[1]),
        spec["known"],
        write=spec.get("write"),
        stop_after=spec.get("stop_after"),
        marker=spec.get("marker"),
        big=spec.get("big", False),
        overwrite=spec.get("overwrite", False),
    )
