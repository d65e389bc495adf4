"""Checking, before a long run, that its output can be written: a result computed for minutes and
then lost to a typo in a path is the worst kind of error."""
from __future__ import annotations

import os

from .errors import InputError


def check_writable(path: str | os.PathLike, what: str, directory: bool = False) -> None:
    """Raise InputError, naming `what` (a flag), unless a file (directory=False) or a directory
    of files (directory=True; created later if absent) can be written at `path`.

    Proof by creating and removing a probe file where the output will go, which also catches
    read-only and pseudo file systems (/proc) and holds for root, whom os.access never refuses."""
    path = os.fspath(path)
    if directory:
        where = os.path.abspath(path)
        while not os.path.exists(where):  # the nearest existing ancestor is where mkdir starts
            where = os.path.dirname(where)
        if not os.path.isdir(where):
            raise InputError(f"{what}: cannot write {path} ({where} exists and is not a directory)")
    else:
        where = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise InputError(f"{what}: cannot write {path} (it is a directory)")
        if not os.path.isdir(where):
            problem = "is not a directory" if os.path.exists(where) else "does not exist"
            raise InputError(f"{what}: cannot write {path} ({where} {problem})")
    probe = os.path.join(where, f".rwkv_np-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.remove(probe)
    except OSError as e:
        raise InputError(f"{what}: cannot write {path} ({e.strerror or e})") from None
