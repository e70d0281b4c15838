"""A seeded mutation fuzzer over specdyn's checkpoint readers (issue 15, item 4).

Valid inputs are built with the real libraries (``torch.save``, ``safetensors``, ``json``,
``csv``), mutated, written into a case folder and fed to the public readers of
`specdyn.sources` (and, now and then, to `specdyn.analyze`). Every outcome must be a clean
result or a `specdyn.errors.SpecdynError` (with a one-line message); anything else, a case
running past its time budget, or the process dying (a segfault, an out-of-memory kill) is
a failure.

A case is fully determined by ``(seed, index)``: its input kind, mutator, mutation
parameters and entry point are drawn from ``random.Random(f"{seed}:{index}")``, and the
inputs it mutates are built deterministically. Reproduce a failure with

    .venv/bin/python tests/sources/fuzz_harness.py one --seed SEED --index INDEX

and run a loop (in this process; `run_loop` wraps it in a subprocess) with

    .venv/bin/python tests/sources/fuzz_harness.py loop --seed 1 --cases 300 --work DIR

Changing the order of KINDS, mutators or entries changes what a ``(seed, index)`` means:
the regression cases in test_fuzz_readers.py check the description they expect.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pickle
import pickletools
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
CASE_BUDGET_S = 20.0  # one case (normally ~50 ms) still running after this is a hang
MEMORY_LIMIT = 6 * 2**30  # address space of the fuzzing process: a memory bomb fails fast

KINDS = (
    "torch-zip",
    "torch-nested",
    "torch-legacy",
    "pickle-p2",
    "pickle-p0",
    "safetensors",
    "st-index",
    "bin-index",
    "config",
    "trainer-state",
    "metrics-csv",
    "metrics-jsonl",
)


# ------------------------------------------------------------------------------- seeds


def _weights(step: int):
    """A tiny state dict, its values fixed by `step`."""
    import torch

    g = torch.Generator().manual_seed(step)
    return {
        "fc1.weight": torch.randn(6, 4, generator=g),
        "fc1.bias": torch.randn(6, generator=g),
        "fc2.weight": torch.randn(3, 6, generator=g),
    }


def _torch_bytes(obj, **kwargs) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def _safetensors_bytes(sd, metadata=None) -> bytes:
    import safetensors.torch

    return safetensors.torch.save(sd, metadata=metadata)


def _shards(sd: dict, fmt: str) -> tuple[dict[str, bytes], bytes]:
    """Two shards of `sd` (file name → bytes) and their index JSON."""
    keys = sorted(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    files: dict[str, bytes] = {}
    weight_map = {}
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    for i, part in enumerate(halves):
        name = f"{stem}-{i + 1:05d}-of-00002.{ext}"
        shard = {k: sd[k] for k in part}
        files[name] = _safetensors_bytes(shard) if fmt == "safetensors" else _torch_bytes(shard)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return files, json.dumps(index, indent=2).encode()


def _trainer_state(step: int) -> bytes:
    history = [
        {"step": s, "loss": 2.0 / (1 + s), "learning_rate": 1e-3, "epoch": s / 100}
        for s in range(10, step + 1, 10)
    ]
    history.append({"step": step, "eval_loss": 1.5, "eval_accuracy": 0.25, "epoch": step / 100})
    state = {
        "global_step": step,
        "epoch": step / 100,
        "max_steps": 1000,
        "log_history": history,
        "best_metric": None,
        "is_world_process_zero": True,
    }
    return json.dumps(state, indent=2).encode()


def _metrics_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "epoch", "train_loss", "val_loss", "val_acc"])
    for s in (0, 100, 200, 300):
        writer.writerow([s, s // 100, 2.0 / (1 + s), "", ""])
        writer.writerow([s, s // 100, "", 1.0 + 1 / (1 + s), 0.1 * (s // 100)])
    return out.getvalue().encode()


def _metrics_jsonl() -> bytes:
    rows = [{"step": s, "loss": 2.0 / (1 + s), "lr": 1e-3, "tag": "train"} for s in (0, 100, 200)]
    rows.append({"step": 300, "val_loss": 1.25, "val": {"acc": 0.5}})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


_CONFIG = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_embd": 6,
    "n_layer": 1,
    "torch_dtype": "float32",
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
}


@dataclass(frozen=True)
class Seed:
    """One valid input: `data` (the bytes mutated), written as `name` into its scene."""

    kind: str
    name: str
    data: bytes


_SEEDS: dict[str, Seed] = {}


def seed(kind: str) -> Seed:
    """The valid input of `kind` (built once per process, deterministically)."""
    if kind not in _SEEDS:
        _SEEDS[kind] = _build_seed(kind)
    return _SEEDS[kind]


def _build_seed(kind: str) -> Seed:
    """Build the valid input of `kind` with the real library that writes it."""
    sd = _weights(100)
    if kind == "torch-zip":
        return Seed(kind, "step_100.pt", _torch_bytes(sd))
    if kind == "torch-nested":  # Lightning-like, numpy values in its hyperparameters
        import numpy as np

        hparams = {"lr": np.float64(1e-3), "betas": np.array([0.9, 0.99]), "name": "mlp"}
        top = {"state_dict": sd, "global_step": 100, "epoch": 1, "loss": 0.5, "hparams": hparams}
        return Seed(kind, "epoch=1-step=100.ckpt", _torch_bytes(top))
    if kind == "torch-legacy":
        return Seed(kind, "step_100.pt", _torch_bytes(sd, _use_new_zipfile_serialization=False))
    if kind == "pickle-p0":  # legacy torch.save, protocol 0, as old .bin files
        data = _torch_bytes(sd, _use_new_zipfile_serialization=False, pickle_protocol=0)
        return Seed(kind, "step_100.bin", data)
    if kind == "pickle-p2":  # a plain pickle of numbers and containers, no tensors
        import numpy as np

        obj = {"step": 100, "loss": 0.5, "names": ["fc1", "fc2"], "shape": (6, 4), "ok": True,
               "w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": b"\x00\xff"}  # fmt: skip
        return Seed(kind, "step_100.bin", pickle.dumps(obj, protocol=2))
    if kind == "safetensors":
        return Seed(kind, "model.safetensors", _safetensors_bytes(sd, {"step": "100"}))
    if kind == "st-index":
        return Seed(kind, "model.safetensors.index.json", _shards(sd, "safetensors")[1])
    if kind == "bin-index":
        return Seed(kind, "pytorch_model.bin.index.json", _shards(sd, "bin")[1])
    if kind == "config":
        return Seed(kind, "config.json", json.dumps(_CONFIG, indent=2).encode())
    if kind == "trainer-state":
        return Seed(kind, "trainer_state.json", _trainer_state(100))
    if kind == "metrics-csv":
        return Seed(kind, "metrics.csv", _metrics_csv())
    if kind == "metrics-jsonl":
        return Seed(kind, "metrics.jsonl", _metrics_jsonl())
    raise ValueError(kind)


# ------------------------------------------------------------------------------ scenes


@dataclass
class Scene:
    """A case folder: `target` is the mutated file, `folder` the checkpoint or run it is
    part of, `run` a run folder (its checkpoints valid unless the target is one)."""

    target: Path
    folder: Path
    run: Path


def _good_run(run: Path, steps=(200, 300)) -> None:
    """Valid torch checkpoints beside the mutated one."""
    run.mkdir(parents=True, exist_ok=True)
    for s in steps:
        (run / f"step_{s}.pt").write_bytes(_cached(f"pt{s}", lambda s=s: _torch_bytes(_weights(s))))


_CACHE: dict[str, bytes] = {}
_SHARDS: dict[str, dict[str, bytes]] = {}


def _cached(key: str, make: Callable[[], bytes]) -> bytes:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


NEIGHBOURS = ("fifo", "loop", "devzero", "dir", "dangling")
_SPECIAL_SHARDS = {"fifo.safetensors": "fifo", "loop.bin": "loop", "zero.safetensors": "devzero",
                   "dir.bin": "dir"}  # fmt: skip


def _special(path: Path, what: str) -> None:
    """Put something that is not a regular file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "loop":
        path.symlink_to(path.name)
    elif what == "devzero":
        path.symlink_to("/dev/zero")
    elif what == "dir":
        path.mkdir()
    else:
        path.symlink_to(path.parent / "nothing-here")


def _neighbour_path(kind: str, run: Path) -> Path:
    if kind.startswith("metrics"):
        return run / ("log.csv" if kind == "metrics-csv" else "log.jsonl")
    if kind == "trainer-state":
        return run / "checkpoint-300" / "model.safetensors"
    return run / ("step_400.safetensors" if kind in ("safetensors", "st-index") else "step_400.pt")


def build_scene(kind: str, data: bytes, root: Path, neighbour: str = "") -> Scene:
    """Write the mutated `data` of `kind` into a fresh folder under `root`; `neighbour`
    (one of NEIGHBOURS) puts a FIFO, link loop, /dev/zero, folder or dangling link
    beside it, named as a checkpoint or log."""
    scene = _build_scene(kind, data, root)
    if neighbour:
        _special(_neighbour_path(kind, scene.run), neighbour)
    if kind in ("st-index", "bin-index"):
        for name, what in _SPECIAL_SHARDS.items():
            if name.encode() in data:  # a shard name the mutation put in the index
                _special(scene.folder / name, what)
    return scene


def _build_scene(kind: str, data: bytes, root: Path) -> Scene:
    """The scene of `kind`, `data` written as its target."""
    name = seed(kind).name
    run = root / "run"
    if kind in ("torch-zip", "torch-nested", "torch-legacy", "pickle-p0", "pickle-p2"):
        _good_run(run)
        target = run / name
        target.write_bytes(data)
        return Scene(target, target, run)
    if kind in ("safetensors", "config"):
        folder = run / "checkpoint-100"
        folder.mkdir(parents=True)
        sd = _weights(100)
        if kind == "config":
            model = _cached("st100", lambda: _safetensors_bytes(sd))
            (folder / "model.safetensors").write_bytes(model)
        _good_run(run)
        (folder / name).write_bytes(data)
        return Scene(folder / name, folder, run)
    if kind in ("st-index", "bin-index"):
        folder = run / "checkpoint-100"
        folder.mkdir(parents=True)
        fmt = "safetensors" if kind == "st-index" else "bin"
        if fmt not in _SHARDS:
            _SHARDS[fmt] = _shards(_weights(100), fmt)[0]
        for shard, raw in _SHARDS[fmt].items():
            (folder / shard).write_bytes(raw)
        (folder / name).write_bytes(data)
        _good_run(run)
        return Scene(folder / name, folder, run)
    if kind == "trainer-state":
        for s in (100, 200):
            folder = run / f"checkpoint-{s}"
            folder.mkdir(parents=True)
            w = _cached(f"st{s}", lambda s=s: _safetensors_bytes(_weights(s)))
            (folder / "model.safetensors").write_bytes(w)
            (folder / "config.json").write_bytes(json.dumps(_CONFIG).encode())
            state = data if s == 200 else _trainer_state(s)
            (folder / name).write_bytes(state)
        return Scene(run / "checkpoint-200" / name, run / "checkpoint-200", run)
    if kind in ("metrics-csv", "metrics-jsonl"):
        _good_run(run, (100, 200, 300))
        (run / name).write_bytes(data)
        return Scene(run / name, run, run)
    raise ValueError(kind)


# ---------------------------------------------------------------------------- mutators

_INTERESTING_INTS = [0, 1, -1, 7, 2**15, 2**31 - 1, 2**31, -(2**31), 2**32, 2**53 + 1, 2**63 - 1,
                     2**63, 2**64, -(2**63), 10**20, 10**400]  # fmt: skip
_INTERESTING_FLOATS = [0.0, -0.0, 1e20, -1e20, 1e308, 5e-324, float("nan"), float("inf"),
                       float("-inf")]  # fmt: skip
_INTERESTING_STRS = ["", "x", "cpu", "cuda:7", "meta", "bogus-device", "F32", "I64", "BF16",
                     "F99", "../../etc/passwd", "/abs/path.safetensors", "a" * 300,
                     "nul\x00byte", "\u00e9\u4e2d", "\ud800", "step_100.pt", "utf-99", ".", "..",
                     "model.safetensors.index.json", "pytorch_model.bin.index.json",
                     "checkpoint-100", "fifo.safetensors", "loop.bin", "zero.safetensors",
                     "dir.bin", "rot13", "zlib", "base64", "utf-16", "O", "V8", "<U3", "m8",
                     ">f8", "f16", "S0", "b1", "two\nlines", "cr\rlf", "\x1b[31mred", "tab\t"]  # fmt: skip
_DEEP = "\x00DEEP\x00"  # placeholders swapped for text json.dumps cannot write
_BADUTF8 = "\x00BADUTF8\x00"


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def m_flip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Flip 1-8 random bits or bytes."""
    buf = bytearray(data)
    spots = []
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        buf[i] = buf[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
        spots.append(i)
    return bytes(buf), f"flip@{spots}"


def m_truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Cut the file short."""
    n = rng.choice([0, 1, 8, rng.randrange(len(data)), len(data) - 1, len(data) // 2])
    return data[:n], f"truncate@{n}"


def m_insert(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Insert random bytes somewhere."""
    i, n = rng.randrange(len(data) + 1), rng.choice([1, 2, 4, 8, 64, 1000])
    return data[:i] + _random_bytes(rng, n) + data[i:], f"insert@{i}+{n}"


def m_delete(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Delete a range of bytes."""
    i = rng.randrange(len(data))
    n = rng.choice([1, 2, 4, 8, 64, 1000])
    return data[:i] + data[i + n :], f"delete@{i}-{n}"


def m_duplicate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Copy a range of bytes to another place."""
    i, j = rng.randrange(len(data)), rng.randrange(len(data))
    n = rng.choice([4, 16, 128, 512])
    return data[:j] + data[i : i + n] + data[j:], f"duplicate@{i}-{n}to{j}"


def m_interesting(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Overwrite a few bytes with a boundary integer (little or big endian)."""
    buf = bytearray(data)
    i = rng.randrange(len(buf))
    value = rng.choice([0, 0xFF, 0x7F, 0x80, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1])
    width = rng.choice([1, 2, 4, 8])
    raw = (value % (1 << (8 * width))).to_bytes(width, rng.choice(["little", "big"]))
    buf[i : i + width] = raw
    return bytes(buf[: len(data)]), f"interesting@{i}={value:#x}/{width}"


BYTE_MUTATORS = [m_flip, m_truncate, m_insert, m_delete, m_duplicate, m_interesting]


# ----------------------------------------------------------------------- JSON mutations


def _nodes(value, path=()):
    """Every (path, value) in a JSON tree, the root included."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, (*path, i))


def _replace(doc, path, new):
    if not path:
        return new
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = new
    return doc


def _odd_value(rng: random.Random, old):
    """A value of another type, a boundary number, deep nesting or bad text."""
    choices = [
        lambda: rng.choice(_INTERESTING_INTS),
        lambda: rng.choice(_INTERESTING_FLOATS),
        lambda: rng.choice(_INTERESTING_STRS),
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: [],
        lambda: {},
        lambda: [old, old],
        lambda: {"nested": old},
        lambda: [rng.choice(_INTERESTING_INTS) for _ in range(rng.randint(1, 4))],
        lambda: _DEEP,
        lambda: _BADUTF8,
        lambda: str(old),
        lambda: -old if isinstance(old, int | float) and not isinstance(old, bool) else old,
    ]
    return rng.choice(choices)()


def _dump_json(doc, rng: random.Random) -> bytes:
    """Serialise a mutated tree, the placeholders swapped for deep nesting / bad UTF-8."""
    text = json.dumps(doc, allow_nan=True)
    depth = rng.choice([200, 5000, 100_000])
    deep = rng.choice(["[", '{"a":'])
    close = "]" if deep == "[" else "}"
    text = text.replace(json.dumps(_DEEP), deep * depth + "1" + close * depth)
    raw = text.encode("utf-8", "surrogatepass")
    return raw.replace(json.dumps(_BADUTF8).encode(), b'"\xff\xfe\xc3("')


def mutate_json_tree(rng: random.Random, doc, n: int | None = None) -> tuple[object, str]:
    """Change 1-3 nodes of a parsed JSON document (value swapped, key dropped or renamed)."""
    what = []
    for _ in range(n or rng.randint(1, 3)):
        nodes = list(_nodes(doc))
        path, old = rng.choice(nodes)
        action = rng.random()
        if path and action < 0.15 and isinstance(path[-1], str):
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            del parent[path[-1]]
            what.append(f"del{list(path)}")
        elif path and action < 0.25 and isinstance(path[-1], str):
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            parent[rng.choice(_INTERESTING_STRS) or "k"] = parent.pop(path[-1])
            what.append(f"rename{list(path)}")
        else:
            new = _odd_value(rng, old)
            doc = _replace(doc, path, new)
            what.append(f"set{list(path)}={_short(new)}")
    return doc, ";".join(what)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def m_json_tree(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Mutate the parsed JSON tree and write it back."""
    doc, what = mutate_json_tree(rng, json.loads(data))
    return _dump_json(doc, rng), f"json-tree:{what}"


_RAW_JSON = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "1e20", "-5",
             "0.5", "[" * 5000 + "]" * 5000, '"\\ud800"', "\xff\xfe", "null", "[]", "{}",
             '"' + "\\u0000" * 3 + '"', "1" * 5000]  # fmt: skip


def m_json_text(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Swap one JSON value token for odd raw text (NaN, 1e999, huge ints, deep nesting)."""
    text = data.decode()
    spots = [i for i, c in enumerate(text) if c in ":[,"]
    i = rng.choice(spots) + 1
    j = i
    while j < len(text) and text[j] not in ",}]\n":
        j += 1
    token = rng.choice(_RAW_JSON)
    raw = (text[:i] + " " + token + text[j:]).encode("utf-8", "surrogateescape")
    return raw.replace("\xff\xfe".encode(), b"\xff\xfe"), f"json-text@{i}={_short(token)}"


JSON_MUTATORS = [m_json_tree, m_json_tree, m_json_text, m_flip, m_truncate, m_insert]


# ----------------------------------------------------------------- pickle mutations

_GLOBALS = [
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage"),
    ("torch", "BoolStorage"), ("torch", "ByteStorage"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"), ("torch", "device"), ("torch", "Size"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy", "dtype"), ("codecs", "encode"),
    ("builtins", "getattr"), ("builtins", "eval"), ("builtins", "set"), ("copyreg", "_reconstructor"),
    ("torch.nn.modules.linear", "Linear"), ("__main__", "Thing"), ("torch", "bfloat16"),
]  # fmt: skip
_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}
_STR_OPS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
            "BINSTRING", "STRING", "BINBYTES", "SHORT_BINBYTES"}  # fmt: skip


def _encode_op(name: str, arg) -> bytes:
    """One opcode with `arg`, choosing the variant of `name` that can hold it."""
    if name in _INT_OPS:
        if name in ("INT", "LONG"):  # protocol 0: text
            return (
                (b"I" if name == "INT" else b"L")
                + str(arg).encode()
                + (b"\n" if name == "INT" else b"L\n")
            )
        if 0 <= arg < 256:
            return b"K" + bytes([arg])
        if 0 <= arg < 65536:
            return b"M" + struct.pack("<H", arg)
        if -(2**31) <= arg < 2**31:
            return b"J" + struct.pack("<i", arg)
        raw = pickle.encode_long(arg)
        return (
            b"\x8a" + bytes([len(raw)]) + raw
            if len(raw) < 256
            else b"\x8b" + struct.pack("<i", len(raw)) + raw
        )
    if name in ("BINFLOAT", "FLOAT"):
        return (
            b"G" + struct.pack(">d", arg)
            if name == "BINFLOAT"
            else b"F" + repr(arg).encode() + b"\n"
        )
    if name in ("UNICODE",):
        return b"V" + arg.encode("raw-unicode-escape") + b"\n"
    if name in ("STRING",):
        return b"S" + repr(arg).encode() + b"\n"
    if name in ("BINBYTES", "SHORT_BINBYTES"):
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        return b"B" + struct.pack("<I", len(raw)) + raw
    if name in _STR_OPS:
        raw = str(arg).encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(raw)) + raw
    if name == "GLOBAL":
        module, _, attr = arg.partition(" ")
        return b"c" + module.encode() + b"\n" + attr.encode() + b"\n"
    raise ValueError(name)


def mutate_pickle(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Change the argument of 1-3 opcodes (ints, floats, strings, globals), or drop,
    repeat or swap opcodes; lengths are rewritten, so the stream still parses."""
    ops = list(pickletools.genops(data))
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    pieces = [data[pos:end] for (_, _, pos), end in zip(ops, ends, strict=True)]
    what = []
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(ops))
        op, arg, _pos = ops[i]
        name = op.name
        roll = rng.random()
        if roll < 0.08:
            pieces[i] = b""
            what.append(f"drop#{i}:{name}")
        elif roll < 0.14:
            pieces[i] = pieces[i] * 2
            what.append(f"repeat#{i}:{name}")
        elif roll < 0.2 and i + 1 < len(pieces):
            pieces[i], pieces[i + 1] = pieces[i + 1], pieces[i]
            what.append(f"swap#{i}:{name}")
        elif name in _INT_OPS:
            new = rng.choice(_INTERESTING_INTS[:-1])  # a 400-digit LONG is fine but slow
            pieces[i] = _encode_op(name, new)
            what.append(f"int#{i}={new}")
        elif name in ("BINFLOAT", "FLOAT"):
            new = rng.choice(_INTERESTING_FLOATS)
            pieces[i] = _encode_op(name, new)
            what.append(f"float#{i}={new}")
        elif name in _STR_OPS:
            new = rng.choice(_INTERESTING_STRS)
            pieces[i] = _encode_op(name, new)
            what.append(f"str#{i}={_short(new)}")
        elif name == "GLOBAL":
            new = " ".join(rng.choice(_GLOBALS))
            pieces[i] = _encode_op(name, new)
            what.append(f"global#{i}={new}")
        else:
            pieces[i] = bytes([rng.randrange(256)]) + pieces[i][1:]
            what.append(f"opcode#{i}:{name}")
    return b"".join(pieces), "pickle:" + ";".join(what)


def m_pickle(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Opcode-aware mutation of a whole pickle file."""
    return mutate_pickle(rng, data)


def m_legacy_pickle(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Opcode-aware mutation of the first pickle of a legacy torch file (magic, version,
    sys info, then the state dict: mutating the state dict reaches the storages)."""
    starts = [0]
    for _ in range(4):
        *_, (_op, _arg, pos) = pickletools.genops(data[starts[-1] :])
        starts.append(starts[-1] + pos + 1)
    k = rng.choice([0, 3, 3, 3, 4]) if len(starts) > 4 else 0
    start, end = starts[k], starts[k + 1] if k + 1 < len(starts) else len(data)
    if k == 4:  # the storage keys list; the raw storages follow it
        end = (
            start
            + next(pos for op, _, pos in pickletools.genops(data[start:]) if op.name == "STOP")
            + 1
        )
    new, what = mutate_pickle(rng, data[start:end])
    return data[:start] + new + data[end:], f"legacy-pickle[{k}]:{what}"


# ------------------------------------------------------------------- zip mutations


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _zip_bytes(members: list[tuple[str, bytes]], rng: random.Random) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_STORED if rng.random() < 0.85 else zipfile.ZIP_DEFLATED
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as z:
        warnings.simplefilter("ignore")  # a duplicated member is the point
        for name, raw in members:
            z.writestr(name, raw)
    return buf.getvalue()


def m_zip_pickle(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """data.pkl replaced by a mutated pickle, the archive rewritten."""
    members = _zip_members(data)
    out, what = [], ""
    for name, raw in members:
        if name.endswith("/data.pkl"):
            raw, what = mutate_pickle(rng, raw)
        out.append((name, raw))
    return _zip_bytes(out, rng), f"zip-data.pkl:{what}"


def m_zip_member(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A member renamed, dropped, duplicated, emptied or resized."""
    members = _zip_members(data)
    i = rng.randrange(len(members))
    name, raw = members[i]
    roll = rng.random()
    if roll < 0.35:
        prefix, _, base = name.rpartition("/")
        new = rng.choice([f"{prefix}/{base}x", f"other/{base}", f"{prefix}/data/99", base,
                          f"{prefix}/../{base}", f"{prefix}/data.pkl"])  # fmt: skip
        members[i] = (new, raw)
        what = f"rename {name}->{new}"
    elif roll < 0.55:
        del members[i]
        what = f"drop {name}"
    elif roll < 0.7:
        members.append((name, raw[::-1]))
        what = f"duplicate {name}"
    elif roll < 0.85:
        members[i] = (name, b"")
        what = f"empty {name}"
    else:
        members[i] = (name, raw + _random_bytes(rng, rng.choice([1, 4, 100])))
        what = f"grow {name}"
    return _zip_bytes(members, rng), f"zip-member:{what}"


_ZIP_FIELDS = {  # central directory entry: field → (offset, width)
    "method": (10, 2), "crc": (16, 4), "compress_size": (20, 4), "file_size": (24, 4),
    "name_len": (28, 2), "extra_len": (30, 2), "disk": (34, 2), "header_offset": (42, 4),
}  # fmt: skip
_LOCAL_FIELDS = {"method": (8, 2), "crc": (14, 4), "compress_size": (18, 4),
                 "file_size": (22, 4), "name_len": (26, 2), "extra_len": (28, 2)}  # fmt: skip


def m_zip_header(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A field of a member's central-directory or local header (sizes, offset, CRC,
    method, name and extra lengths) or of the end record set to a boundary value."""
    buf = bytearray(data)
    central = [i for i in range(len(buf) - 4) if buf[i : i + 4] == b"PK\x01\x02"]
    local = [i for i in range(len(buf) - 4) if buf[i : i + 4] == b"PK\x03\x04"]
    end = data.rfind(b"PK\x05\x06")
    roll = rng.random()
    if roll < 0.5 and central:
        at, (field, (off, width)) = rng.choice(central), rng.choice(list(_ZIP_FIELDS.items()))
    elif roll < 0.85 and local:
        at, (field, (off, width)) = rng.choice(local), rng.choice(list(_LOCAL_FIELDS.items()))
    else:
        at = end
        field, (off, width) = rng.choice([("entries", (10, 2)), ("cd_size", (12, 4)),
                                          ("cd_offset", (16, 4)), ("comment_len", (20, 2))])  # fmt: skip
    value = rng.choice([0, 1, 8, 12, 99, 2 ** (8 * width) - 1, 2 ** (8 * width - 1), len(data)])
    value %= 2 ** (8 * width)
    old = int.from_bytes(buf[at + off : at + off + width], "little")
    if rng.random() < 0.3:
        value = (old + rng.choice([-1, 1, 64, -64])) % 2 ** (8 * width)
    buf[at + off : at + off + width] = value.to_bytes(width, "little")
    return bytes(buf), f"zip-header@{at}:{field}={value}"


def m_legacy_sizes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A legacy file's raw storage records: one storage's 8-byte element count set to a
    boundary value, or its bytes cut."""
    pos = 0
    for _ in range(5):  # magic, protocol, sys info, the state dict, the storage keys
        *_, (_op, _arg, end) = pickletools.genops(data[pos:])
        pos += end + 1
    count = struct.unpack("<q", data[pos : pos + 8])[0]
    roll = rng.random()
    if roll < 0.7:
        new = rng.choice([0, 1, count - 1, count + 1, 2**31, 2**40, 2**62, -1, -(2**63)])
        return data[:pos] + struct.pack("<q", new) + data[pos + 8 :], f"legacy-size@{pos}={new}"
    cut = pos + rng.choice([0, 4, 8, 12, 8 + 4 * count - 1])
    return data[:cut], f"legacy-cut@{cut}"


# ------------------------------------------------------------- safetensors mutations


def _st_split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _st_join(header: bytes, body: bytes, rng: random.Random) -> bytes:
    header = header + b" " * ((-len(header)) % 8 if rng.random() < 0.7 else 0)
    return struct.pack("<Q", len(header)) + header + body


def m_st_header(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The header JSON mutated (dtype, shape, offsets, metadata), its length rewritten."""
    doc, body = _st_split(data)
    tensors = [k for k in doc if k != "__metadata__"]
    if rng.random() < 0.6:  # aim at a tensor field
        key = rng.choice(tensors)
        field = rng.choice(["dtype", "shape", "data_offsets"])
        old = doc[key][field]
        if field == "data_offsets" and rng.random() < 0.4:
            other = doc[rng.choice(tensors)]["data_offsets"]
            new = rng.choice([list(other), old[::-1], [old[0], old[0]], [old[0] - 1, old[1]],
                              [old[0], old[1] + 4], [old[0], 2**64], [old[0], 2**63 + old[0]]])  # fmt: skip
        elif field == "shape" and rng.random() < 0.5:
            new = rng.choice([[], [0], [2**32, 2**32], [-1, 4], old[::-1], [*old, 1], [2**64]])
        else:
            new = _odd_value(rng, old)
        doc[key][field] = new
        what = f"{key}.{field}={_short(new)}"
    else:
        doc, what = mutate_json_tree(rng, doc)
    return _st_join(_dump_json(doc, rng), body, rng), f"st-header:{what}"


def m_st_length(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The 8-byte header length set to a wrong value."""
    n = struct.unpack("<Q", data[:8])[0]
    new = rng.choice([0, 1, n - 1, n + 1, n + 8, len(data), len(data) - 8, 2**63, 2**64 - 1, 2**31])
    return struct.pack("<Q", new) + data[8:], f"st-length={new}"


def m_st_header_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Byte mutations inside the header only (the length kept)."""
    n = struct.unpack("<Q", data[:8])[0]
    header, what = rng.choice([m_flip, m_interesting])(rng, data[8 : 8 + n])
    return data[:8] + header + data[8 + n :], f"st-header-bytes:{what}"


def m_st_body(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The tensor data truncated or grown."""
    n = struct.unpack("<Q", data[:8])[0]
    cut = rng.choice([8 + n, 8 + n + 1, len(data) - 1, len(data) - 4, len(data) + 3])
    return (data[:cut] if cut <= len(data) else data + b"\0" * (cut - len(data))), f"st-body@{cut}"


# ----------------------------------------------------------------- log mutations

_CELLS = ["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1" + "0" * 400, "1e20", "-5", "",
          " ", "abc", "0x10", "1_000", "True", "None", '"', "1,2", "\x00", "\ud800", "١٢",
          "9" * 5000, "x" * 200_000, '"' + "y" * 200_000 + '"', "\r", "\ufeff1"]  # fmt: skip


def m_csv(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Cells set to odd values, lines dropped, repeated or cut, the header changed."""
    lines = data.decode().split("\n")
    what = []
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        cells = lines[i].split(",")
        roll = rng.random()
        if roll < 0.6:
            j = rng.randrange(len(cells))
            cells[j] = rng.choice(_CELLS + ["step", "epoch", "global_step"])
            lines[i] = ",".join(cells)
            what.append(f"cell{i},{j}={_short(cells[j])}")
        elif roll < 0.7:
            del lines[i]
            what.append(f"drop{i}")
        elif roll < 0.8:
            lines.insert(i, lines[i])
            what.append(f"repeat{i}")
        elif roll < 0.9:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
            what.append(f"cut{i}")
        else:
            lines[i] = ",".join(cells + [rng.choice(_CELLS)] * rng.randint(1, 3))
            what.append(f"extra{i}")
    raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    return raw, "csv:" + ";".join(what)


def m_jsonl(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One line's JSON tree mutated or its text swapped for odd raw JSON."""
    lines = data.decode().split("\n")
    i = rng.randrange(len(lines) - 1)
    if rng.random() < 0.6:
        doc, what = mutate_json_tree(rng, json.loads(lines[i]))
        raw = _dump_json(doc, rng)
    else:
        raw, what = m_json_text(rng, lines[i].encode())
    out = [line.encode() for line in lines]
    out[i] = raw.replace(b"\n", b" ")
    return b"\n".join(out), f"jsonl-line{i}:{what}"


def m_encoding(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The text re-encoded (UTF-16, UTF-8 with a BOM, Latin-1 with a non-ASCII value)."""
    text = data.decode()
    roll = rng.randrange(4)
    if roll == 0:
        return text.encode("utf-16"), "encoding:utf-16"
    if roll == 1:
        return b"\xef\xbb\xbf" + data, "encoding:bom"
    if roll == 2:
        return text.replace("loss", "l\u00f6ss").encode("latin-1"), "encoding:latin-1"
    return data.replace(b"\n", b"\r\n"), "encoding:crlf"


MUTATORS: dict[str, list[Callable]] = {
    "torch-zip": [*BYTE_MUTATORS, m_zip_pickle, m_zip_pickle, m_zip_member, m_zip_header],
    "torch-nested": [*BYTE_MUTATORS, m_zip_pickle, m_zip_pickle, m_zip_member, m_zip_header],
    "torch-legacy": [
        *BYTE_MUTATORS,
        m_legacy_pickle,
        m_legacy_pickle,
        m_legacy_pickle,
        m_legacy_sizes,
    ],  # fmt: skip
    "pickle-p0": [
        *BYTE_MUTATORS,
        m_legacy_pickle,
        m_legacy_pickle,
        m_legacy_pickle,
        m_legacy_sizes,
    ],  # fmt: skip
    "pickle-p2": [*BYTE_MUTATORS, m_pickle, m_pickle, m_pickle],
    "safetensors": [
        *BYTE_MUTATORS,
        m_st_header,
        m_st_header,
        m_st_header,
        m_st_length,
        m_st_header_bytes,
        m_st_body,
    ],  # fmt: skip
    "st-index": [*JSON_MUTATORS, m_encoding],
    "bin-index": [*JSON_MUTATORS, m_encoding],
    "config": [*JSON_MUTATORS, m_encoding],
    "trainer-state": [*JSON_MUTATORS, m_encoding],
    "metrics-csv": [m_csv, m_csv, m_csv, m_flip, m_truncate, m_insert, m_encoding],
    "metrics-jsonl": [m_jsonl, m_jsonl, m_jsonl, m_flip, m_truncate, m_insert, m_encoding],
}


# ---------------------------------------------------------------------- entry points


def _read_all(ckpt) -> None:
    """Read every tensor of a checkpoint, as analysis does, and its fingerprint."""
    with ckpt.open() as reader:
        for key in reader.keys():
            reader.info(key)
            reader.get(key)
    ckpt.fingerprint()


def _each(calls: list[Callable[[], object]]) -> None:
    """Make every call, even after one raised a specdyn error (the first is re-raised
    at the end): one refused input must not hide what the next call does with it."""
    from specdyn.errors import SpecdynError

    first: SpecdynError | None = None
    for call in calls:
        try:
            call()
        except SpecdynError as exc:
            first = first or exc
    if first is not None:
        raise first


def e_open(scene: Scene) -> None:
    """open_checkpoint on the checkpoint holding the mutated file, then every tensor."""
    from specdyn.sources import open_checkpoint

    _read_all(open_checkpoint(scene.folder))


def e_discover(scene: Scene) -> None:
    """discover on the run folder, every tensor of every checkpoint, each run's log."""
    from specdyn.sources import discover, read_training_log

    found = discover(scene.run)
    calls: list[Callable[[], object]] = []
    for run in found.runs:
        calls += [lambda c=ckpt: _read_all(c) for ckpt in run.checkpoints]
        calls.append(lambda r=run: read_training_log(r))
    _each(calls)


def e_target(scene: Scene) -> None:
    """discover and open_checkpoint on the mutated file itself (a weight file or index)."""
    from specdyn.sources import discover, open_checkpoint

    def found() -> None:
        """Discover the file alone and read what it gives."""
        for run in discover(scene.target).runs:
            _each([lambda c=ckpt: _read_all(c) for ckpt in run.checkpoints])

    _each([found, lambda: _read_all(open_checkpoint(scene.target))])


def e_metrics(scene: Scene) -> None:
    """read_metrics_file on the mutated log (by step and by epoch), and
    read_training_log with it as --metrics."""
    from specdyn.sources import discover, read_metrics_file, read_training_log

    calls: list[Callable[[], object]] = [
        lambda: read_metrics_file(scene.target),
        lambda: read_metrics_file(scene.target, key="epoch"),
    ]
    calls += [
        lambda r=run: read_training_log(r, metrics_file=scene.target)
        for run in discover(scene.run).runs
    ]
    _each(calls)


def e_analyze(scene: Scene) -> None:
    """specdyn.analyze on the run folder (values only), the mutated file among good ones;
    a checkpoint that cannot be read alone must be named in its result (note, problem)."""
    import specdyn
    from specdyn.errors import SpecdynError
    from specdyn.sources import open_checkpoint

    home = scene.run.parent / "home"
    result = specdyn.analyze(scene.run, home=home, vectors=None)
    if scene.folder == scene.run:  # a log: nothing analyze would list as a problem
        return
    try:  # what analyze reads: the matrices (a broken 1-D bias is never read)
        with open_checkpoint(scene.folder).open() as reader:
            for key in reader.keys():
                if len(reader.info(key).shape) >= 2:
                    reader.get(key)
    except SpecdynError as exc:
        # never a silent drop: a checkpoint its reader refuses is a problem or a note
        if str(scene.folder) not in repr(result):
            raise AssertionError(
                f"analyze left {scene.folder} out without a note or problem (read alone: {exc})"
            ) from None


ENTRIES: dict[str, list[Callable[[Scene], None]]] = {kind: [e_open, e_discover] for kind in KINDS}
for _kind in ("torch-zip", "torch-nested", "torch-legacy", "pickle-p0", "safetensors",
              "st-index", "bin-index"):  # fmt: skip
    ENTRIES[_kind].append(e_target)
ENTRIES["trainer-state"] = [e_discover]
for _kind in ("metrics-csv", "metrics-jsonl"):
    ENTRIES[_kind] = [e_metrics, e_metrics, e_discover]


# -------------------------------------------------------------------------- outcomes


class CaseTimeout(BaseException):
    """A case ran past its budget (a BaseException: `except Exception` or `except
    OSError` in the code under test cannot swallow it, as it could a TimeoutError)."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


def outcome(fn: Callable[[], object], budget_s: float = CASE_BUDGET_S) -> tuple[str, str]:
    """Run `fn` under a time budget: ("clean", ""), ("SpecdynError:<Class>", message) or
    ("failure", what went wrong: another exception with its innermost frames, a message of
    several lines, or "timeout")."""
    from specdyn.errors import SpecdynError

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    start = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
        try:
            fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.monotonic() - start
        if elapsed > budget_s:  # the alarm was swallowed somewhere
            return "failure", f"timeout: ran {elapsed:.1f} s (budget {budget_s} s)"
        return "clean", ""
    except CaseTimeout:
        return "failure", f"timeout: still running after {budget_s} s"
    except SpecdynError as exc:
        message = str(exc)
        if "\n" in message or not message.strip():
            return "failure", f"{type(exc).__name__} message not one line: {message!r}"
        return f"SpecdynError:{type(exc).__name__}", message
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)
        )
        return "failure", f"{type(exc).__name__}: {_short_text(str(exc))} [at {where}]"
    finally:
        signal.signal(signal.SIGALRM, previous)


def _short_text(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One fuzz case: what (seed, index) draws."""

    seed: int
    index: int
    kind: str
    mutator: str
    mutation: str
    entry: str
    data: bytes
    neighbour: str = ""
    kinds: tuple[str, ...] = KINDS

    def describe(self) -> str:
        """What the case is: seed, index, input kind, mutator, entry point and mutation."""
        beside = f" beside={self.neighbour}" if self.neighbour else ""
        return (
            f"seed={self.seed} index={self.index} kind={self.kind} mutator={self.mutator} "
            f"entry={self.entry}{beside} mutation={self.mutation}"
        )

    def reproduce(self) -> str:
        """The command that runs this case alone."""
        only = "" if self.kinds == KINDS else f" --kinds {','.join(self.kinds)}"
        return f"python tests/sources/fuzz_harness.py one --seed {self.seed} --index {self.index}{only}"


ANALYZE_EVERY = 12  # one case in this many runs specdyn.analyze (a second or so each)


def make_case(seed_: int, index: int, kinds: tuple[str, ...] = KINDS) -> Case:
    """The case (seed, index) draws: kind, mutator (applied once, or twice in one case in
    eight), mutation and entry point."""
    rng = random.Random(f"{seed_}:{index}")
    kind = rng.choice(kinds)
    data = seed(kind).data
    names, whats = [], []
    for _ in range(2 if rng.random() < 0.125 else 1):
        if not data:  # truncated to nothing: no second mutation
            break
        mutator = rng.choice(MUTATORS[kind])
        try:
            data, what = mutator(rng, data)
        except Exception as exc:  # the first mutation left nothing the second can parse
            data, what = m_flip(rng, data)
            what = f"{what} (after {mutator.__name__} failed: {type(exc).__name__})"
            mutator = m_flip
        names.append(mutator.__name__)
        whats.append(what)
    entry = e_analyze if rng.randrange(ANALYZE_EVERY) == 0 else rng.choice(ENTRIES[kind])
    neighbour = rng.choice(NEIGHBOURS) if rng.random() < 0.08 else ""
    return Case(
        seed_, index, kind, "+".join(names), " | ".join(whats), entry.__name__, data, neighbour,
        kinds,
    )  # fmt: skip


def run_case(case: Case, work: Path, budget_s: float = CASE_BUDGET_S) -> tuple[str, str]:
    """Write the case's scene into `work` (emptied first) and run its entry point."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    scene = build_scene(case.kind, case.data, work, case.neighbour)
    entry = globals()[case.entry]
    return outcome(lambda: entry(scene), budget_s)


# ------------------------------------------------------------------------------ loops


def _limit_memory() -> None:
    """Cap the address space, so a memory bomb fails in this process, not the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def loop(
    seed_: int,
    *,
    work: Path,
    start: int = 0,
    cases: int | None = None,
    seconds: float | None = None,
    progress: Path | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> None:
    """Run cases start, start+1, … (until `cases` or `seconds`), in this process.

    Before each case its index goes to stdout (``START i``, flushed) so that whoever
    started this process can name the case that killed it; after it, one JSON line
    ``{"index", "outcome", "detail", "case"}`` for a failure, nothing for a pass.
    `progress` is rewritten every ~2 s with the counts so far (a JSON object)."""
    import torch

    torch.set_num_threads(1)
    _limit_memory()
    counts: Counter[str] = Counter()
    t0 = last = time.monotonic()
    i = start
    out = sys.stdout

    def write_progress(done: bool) -> None:
        """Rewrite the progress file (atomically) with the counts so far."""
        if progress is None:
            return
        doc = {"seed": seed_, "start": start, "next": i, "cases": sum(counts.values()),
               "seconds": round(time.monotonic() - t0, 1), "outcomes": dict(counts.most_common()),
               "done": done}  # fmt: skip
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, progress)

    crash_at = int(os.environ.get("SPECDYN_FUZZ_CRASH_AT", "-1"))  # the harness's own test
    while (cases is None or i < start + cases) and (
        seconds is None or time.monotonic() - t0 < seconds
    ):
        out.write(f"START {i}\n")
        out.flush()
        if i == crash_at:
            os.kill(os.getpid(), signal.SIGSEGV)
        case = make_case(seed_, i, kinds)
        kind, detail = run_case(case, work / "case")
        key = "failure" if kind == "failure" else kind
        counts[key] += 1
        if kind == "failure":
            line = {"index": i, "outcome": kind, "detail": detail, "case": case.describe(),
                    "reproduce": case.reproduce()}  # fmt: skip
            out.write("FAIL " + json.dumps(line) + "\n")
        out.write(f"DONE {i} {key} {case.kind}\n")
        out.flush()
        i += 1
        if time.monotonic() - last > 2:
            write_progress(False)
            last = time.monotonic()
    write_progress(True)


@dataclass
class LoopReport:
    """What run_loop saw: outcome counts (also per input kind), failures (messages that reproduce them), the
    cases run and the seconds taken."""

    counts: Counter
    by_kind: Counter
    failures: list[str]
    cases: int
    seconds: float


def run_loop(
    seed_: int,
    *,
    work: Path,
    cases: int | None = None,
    seconds: float | None = None,
    progress: Path | None = None,
    kinds: tuple[str, ...] = KINDS,
    max_restarts: int = 20,
) -> LoopReport:
    """`loop` in child processes: a child that dies (segfault, killed) or stops
    answering is reported as a failure of the case it was running, and a new child goes
    on with the next case."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    counts: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    failures: list[str] = []
    start, restarts = 0, 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parents[2]), str(HERE.parent)]))
    while True:
        left_cases = None if cases is None else cases - start
        left_s = None if seconds is None else seconds - (time.monotonic() - t0)
        if (left_cases is not None and left_cases <= 0) or (left_s is not None and left_s <= 0):
            break
        cmd = [sys.executable, str(HERE), "loop", "--seed", str(seed_), "--start", str(start),
               "--work", str(work)]  # fmt: skip
        cmd += [] if left_cases is None else ["--cases", str(left_cases)]
        cmd += [] if left_s is None else ["--seconds", str(left_s)]
        cmd += [] if progress is None else ["--progress", str(progress)]
        cmd += ["--kinds", ",".join(kinds)]
        log = work / "child.log"
        wall = (left_s or 0) + (left_cases or 0) * CASE_BUDGET_S + 60
        with open(log, "w") as fh:
            child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            try:
                rc = child.wait(timeout=wall)
            except subprocess.TimeoutExpired:
                child.kill()
                rc = child.wait()
        started, done = None, None
        stderr_tail = []
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("START "):
                started = int(line.split()[1])
            elif line.startswith("DONE "):
                _, idx, key, kind = line.split()
                done = int(idx)
                counts[key] += 1
                by_kind[f"{kind} {key}"] += 1
            elif line.startswith("FAIL "):
                doc = json.loads(line[5:])
                failures.append(f"{doc['case']}: {doc['detail']}; reproduce: {doc['reproduce']}")
            else:
                stderr_tail.append(line)
        if rc == 0:
            break
        if started is None or started == done:  # died outside a case
            failures.append(
                f"fuzz child exited {rc} outside a case: {' / '.join(stderr_tail[-5:])}"
            )
            break
        case = make_case(seed_, started, kinds)
        counts["failure"] += 1
        by_kind[f"{case.kind} failure"] += 1
        failures.append(
            f"{case.describe()}: the process died (exit {rc}, a crash, a kill or a hang "
            f"beyond the case budget); last output: {' / '.join(stderr_tail[-3:])}; "
            f"reproduce: {case.reproduce()}"
        )
        start, restarts = started + 1, restarts + 1
        if restarts > max_restarts:
            failures.append(f"gave up after {restarts} child processes died")
            break
    return LoopReport(counts, by_kind, failures, sum(counts.values()), time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``one`` (a case, printed) or ``loop`` (cases in this process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("one", help="run one case and print its outcome")
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--index", type=int, required=True)
    one.add_argument("--work", type=Path, default=None)
    one.add_argument("--save", type=Path, default=None, help="write the mutated input here")
    one.add_argument("--kinds", default=",".join(KINDS), help="as the loop that found it")
    lp = sub.add_parser("loop", help="run cases in this process (see run_loop for a guarded run)")
    lp.add_argument("--seed", type=int, required=True)
    lp.add_argument("--start", type=int, default=0)
    lp.add_argument("--cases", type=int, default=None)
    lp.add_argument("--seconds", type=float, default=None)
    lp.add_argument("--work", type=Path, required=True)
    lp.add_argument("--progress", type=Path, default=None)
    lp.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    if args.command == "one":
        import tempfile

        case = make_case(args.seed, args.index, tuple(args.kinds.split(",")))
        print(case.describe())
        if args.save:
            args.save.write_bytes(case.data)
        work = args.work or Path(tempfile.mkdtemp(prefix="specdyn-fuzz-"))
        kind, detail = run_case(case, work / "case")
        print(kind, detail)
        return 0 if kind != "failure" else 1
    loop(args.seed, work=args.work, start=args.start, cases=args.cases, seconds=args.seconds,
         progress=args.progress, kinds=tuple(args.kinds.split(",")))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    sys.exit(main())
