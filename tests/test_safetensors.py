"""safetensors files are written in whole 2 MB spans (so the page cache holds them in huge
folios) and read back bit for bit, as views of one read-only memory map."""
import numpy as np

from rwkv_np.formats.safetensors import (
    HUGE_PAGE,
    _write_in_huge_pages,
    read_safetensors,
    write_safetensors,
)
from rwkv_np.storage import Bfloat16


class Calls:
    """A file that records each write() call's offset and length."""
    def __init__(self):
        self.data, self.calls = bytearray(), []

    def write(self, b):
        self.calls.append((len(self.data), len(b)))
        self.data += b
        return len(b)


def test_every_write_but_the_last_is_whole_aligned_2mb_spans():
    rng = np.random.default_rng(0)
    sizes = [24, 5 * HUGE_PAGE + 3, 3, 0, HUGE_PAGE - 27, 2 * HUGE_PAGE, 1, HUGE_PAGE + 1]
    pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    f = Calls()
    _write_in_huge_pages(f, [bytes(pieces[0])] + pieces[1:])
    assert bytes(f.data) == b"".join(bytes(p) for p in pieces)
    *whole, (last_offset, _) = f.calls
    assert all(offset % HUGE_PAGE == 0 and n % HUGE_PAGE == 0 and n for offset, n in whole)
    assert last_offset % HUGE_PAGE == 0


def test_tensors_across_2mb_boundaries_read_back_exactly_as_mapped_views(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"a": rng.standard_normal((700, 1000)).astype(np.float32),   # 2.8 MB
               "b": rng.standard_normal(3).astype(np.float32),
               "c": Bfloat16(rng.integers(0, 2**16, (1100, 1001), dtype=np.uint16)),
               "d": rng.integers(-128, 128, (3, 5), dtype=np.int8),
               "e": np.zeros((0, 4), np.float64)}
    file = str(tmp_path / "t.safetensors")
    write_safetensors(file, tensors, {"k": "v"})
    got, meta = read_safetensors(file)
    assert meta == {"k": "v"} and sorted(got) == sorted(tensors)
    for name, x in tensors.items():
        assert got[name].dtype == x.dtype and got[name].shape == x.shape
        np.testing.assert_array_equal(got[name].view(np.ndarray), x.view(np.ndarray))
    assert not got["a"].flags.owndata and not got["a"].flags.writeable
