"""Say once, on stderr, that Numba is compiling rwkv_np's kernels, so that a first run (or the
first run with a new weight storage, dtype or generation) that sits silent for many seconds is
not taken for a hang.

Numba announces every compilation it cannot serve from its disk cache with a "numba:compile"
event (numba.core.event; a cache hit sends none), so the notice appears exactly when a compile
happens and never on a run whose kernels are all cached. COMPILE_SECONDS is the typical
cold-cache time. Measured (2 shared cores, load ~5; whole `rwkv-np generate "ROMEO:"
--max-new-tokens 3` runs, a fresh NUMBA_CACHE_DIR each): demo model as on disk (float16) 19 s,
--weights float32 22 s, bfloat16 19 s, int8 26 s, RWKV-7 (rwkv.cpp tiny 7v0) 25 s; the same
runs from the warm cache 2.3-3.4 s. Each new weight storage or generation compiles its own
kernels the first time it is used.
"""
from __future__ import annotations

import sys

from numba.core import event

COMPILE_SECONDS = 20


class CompileNotice(event.Listener):
    """Writes one line to `stream` (None: sys.stderr at the time) at the first compile of a
    function of the package `package`."""

    def __init__(self, stream=None, package: str = "rwkv_np"):
        self.stream, self.package, self.said = stream, package, False

    def on_start(self, ev) -> None:
        func = getattr(ev.data.get("dispatcher"), "py_func", None)
        if self.said or not getattr(func, "__module__", "").startswith(self.package):
            return
        self.said = True
        stream = self.stream or sys.stderr
        stream.write(f"compiling kernels (first run only, ~{COMPILE_SECONDS} s)…\n")
        stream.flush()

    def on_end(self, ev) -> None:
        pass


_installed: list[CompileNotice] = []


def announce_compiles() -> None:
    """From now on, in this process, say it on stderr the first time an rwkv_np kernel compiles.
    Calling it again does nothing."""
    if not _installed:
        _installed.append(CompileNotice())
        event.register("numba:compile", _installed[0])
