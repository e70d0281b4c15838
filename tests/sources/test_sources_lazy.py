"""Reading is lazy: opening reads metadata, get(key) reads that tensor's bytes only, and
memory holds the tensor being read, not the checkpoint (measured with the kernel's own
counters: /proc/self/io rchar for bytes read, VmHWM for peak resident memory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _ckpt_factory import write_safetensors, write_sharded, write_torch

from specdyn.errors import CheckpointError
from specdyn.sources import open_checkpoint

BIG = 4_000_000  # float32 elements: 16 MB
REPO = Path(__file__).resolve().parents[2]


def _bytes_read() -> int:
    """Bytes this process has read through read/pread syscalls so far."""
    return int(re.search(r"rchar:\s+(\d+)", Path("/proc/self/io").read_text()).group(1))


def _weights() -> dict[str, torch.Tensor]:
    # names in file order for both torch.save (insertion) and safetensors (sorted)
    return {"a.small": torch.arange(16, dtype=torch.float32), "b.big": torch.ones(BIG),
            "c.tail": torch.full((8,), 3.0)}


@pytest.mark.parametrize("fmt", ["torch", "torch-legacy", "safetensors", "sharded"])
def test_get_reads_only_that_tensor(fmt, tmp_path):
    sd = _weights()
    if fmt == "safetensors":
        path = write_safetensors(tmp_path / "w.safetensors", sd)
    elif fmt == "sharded":
        path = write_sharded(tmp_path / "sh", sd, "bin", n_shards=3)
    else:
        path = write_torch(tmp_path / "w.pt", sd, legacy=fmt == "torch-legacy")
    start = _bytes_read()
    ckpt = open_checkpoint(path)
    with ckpt.open() as reader:
        opened = _bytes_read()
        small = reader.get("a.small")
        after_small = _bytes_read()
        tail = reader.get("c.tail")
        after_tail = _bytes_read()
        big = reader.get("b.big")
        after_big = _bytes_read()
    assert torch.equal(small, sd["a.small"]) and torch.equal(tail, sd["c.tail"]) and torch.equal(big, sd["b.big"])
    assert opened - start < 256 * 1024  # metadata only (twice: probe + open)
    assert after_small - opened < 4096
    assert after_tail - after_small < 4096
    assert after_big - after_tail >= 4 * BIG  # the counter does see a real read


def test_slice_of_a_large_storage_reads_the_slice(tmp_path):
    base = torch.randn(BIG)
    path = write_torch(tmp_path / "view.pt", {"piece": base[1000:1010]})  # torch.save keeps all of base
    assert path.stat().st_size > 4 * BIG
    with open_checkpoint(path).open() as reader:
        reader.get("piece")  # the first read streams the whole record once, for its CRC-32
        before = _bytes_read()
        piece = reader.get("piece")
        assert _bytes_read() - before < 4096
    assert torch.equal(piece, base[1000:1010]) and piece.untyped_storage().nbytes() == 40


def test_info_reads_no_data(tmp_path):
    path = write_torch(tmp_path / "w.pt", _weights())
    with open_checkpoint(path).open() as reader:
        before = _bytes_read()
        overhead = _bytes_read() - before  # reading /proc/self/io is itself a read
        before = _bytes_read()
        infos = {k: reader.info(k) for k in reader.keys()}
        assert abs(_bytes_read() - before - overhead) < 16
    assert infos["b.big"].shape == (BIG,) and infos["b.big"].dtype == torch.float32


@pytest.mark.parametrize("fmt", ["torch", "torch-legacy", "safetensors"])
def test_file_truncated_after_opening(fmt, tmp_path):
    sd = _weights()
    if fmt == "safetensors":
        path = write_safetensors(tmp_path / "w.safetensors", sd)
    else:
        path = write_torch(tmp_path / "w.pt", sd, legacy=fmt == "torch-legacy")
    with open_checkpoint(path).open() as reader:
        cut = path.stat().st_size // 2  # inside the big tensor, which fills most of the file
        os.truncate(path, cut)
        outcome = {}
        for key in reader.keys():
            try:
                outcome[key] = torch.equal(reader.get(key), sd[key])
            except CheckpointError as exc:
                outcome[key] = str(exc)
            assert (_byte_end(reader, key) <= cut) == (outcome[key] is True), key
    msg = outcome["b.big"]
    assert str(path) in msg and "'b.big'" in msg and "truncated" in msg and "\n" not in msg
    if fmt != "torch-legacy":  # (the legacy format orders storages by id: big may come first)
        assert outcome["a.small"] is True  # what lies before the cut still reads


def _byte_end(reader, key: str) -> int:
    """Where a tensor's bytes end in its file (white box: the reader's entry)."""
    entry = reader._entries[key]
    try:
        offset, _ = entry.locate(key)
    except CheckpointError:  # its zip entry header itself is past the cut
        return 2**62
    return offset + entry.span_start + entry.span_len


def test_peak_memory_follows_the_largest_tensor_not_the_checkpoint(tmp_path):
    n_tensors, elements = 12, 6_000_000  # 24 MB each, 288 MB in all
    path = tmp_path / "many.pt"
    torch.save({f"layer{i}.weight": torch.full((elements,), float(i)) for i in range(n_tensors)}, path)
    script = textwrap.dedent(f"""
        import re, sys, torch
        from specdyn.sources import open_checkpoint

        def status(key):
            return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

        def reset_peak():
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")

        ckpt = open_checkpoint({str(path)!r})
        total = 0.0
        reset_peak()
        base = status("VmRSS")
        with ckpt.open() as reader:
            for key in reader.keys():
                tensor = reader.get(key)
                total += float(tensor.sum())
                del tensor
        lazy_peak = status("VmHWM") - base
        assert total == sum(i * {elements} for i in range({n_tensors})), total
        reset_peak()
        base = status("VmRSS")
        full = torch.load({str(path)!r}, weights_only=True, mmap=False)
        full_peak = status("VmHWM") - base
        print(lazy_peak, full_peak)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lazy_peak, full_peak = map(int, out.stdout.split())
    tensor_bytes = elements * 4
    # the measurement does see a full load (less what the heap kept from the lazy pass)
    assert full_peak >= n_tensors * tensor_bytes * 0.7, (full_peak, lazy_peak)
    # a read buffer, the tensor and allocator slack: a few tensors' worth, never the file
    assert lazy_peak <= 3.5 * tensor_bytes, (lazy_peak, tensor_bytes)
    assert lazy_peak <= 0.3 * full_peak, (lazy_peak, full_peak)
