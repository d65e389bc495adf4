"""resident.py: float32 matrices copied off a file's memory map keep their values, and the pages
the copy read leave this process's mapping (so it holds each matrix once)."""
import mmap
import sys

import numpy as np
import pytest

import rwkv_np.resident as resident_module
from rwkv_np.formats.safetensors import read_safetensors, write_safetensors
from rwkv_np.resident import resident


def mapping_rss_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(fields[1])
    return total


def test_arrays_not_mapped_are_returned_as_they_are():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert resident(a) is a


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_mapped_matrix_is_copied_and_its_pages_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(resident_module, "_CHUNK", 1 << 20)  # several pieces, a partial last one
    rng = np.random.default_rng(0)
    W = rng.standard_normal((1000, 777)).astype(np.float32)  # 3.1 MB, rows not page-aligned
    path = tmp_path / "m.safetensors"
    write_safetensors(str(path), {"a": np.ones(3, np.float32), "w": W})
    mapped = read_safetensors(str(path))[0]["w"]
    assert not mapped.flags.writeable
    float(mapped.sum())  # every page of it resident in this process
    before = mapping_rss_kb(path)
    copy = resident(mapped)
    assert copy.flags.owndata and copy.flags.writeable and copy.flags.c_contiguous
    np.testing.assert_array_equal(copy, W)
    after = mapping_rss_kb(path)
    assert before >= W.nbytes // 1024 and after <= 16, (before, after)  # at most the edge pages
    np.testing.assert_array_equal(mapped, W)  # the map still reads (the page cache kept the pages)


def test_writable_maps_are_left_alone():
    m = mmap.mmap(-1, 4096)  # anonymous, writable: dropping its pages would zero them
    a = np.frombuffer(m, np.float32)
    a[:] = 1.5
    assert resident(a) is a and np.all(a == 1.5)
    b = np.arange(8, dtype=np.float32)[::2]
    assert resident(b) is b  # not a map at all
