"""glibc malloc settings that let the memory of large requests go back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover
        return None


_LIBC = _libc()


def tune_malloc() -> None:
    """Fix glibc's mmap threshold at 1 MiB: large bodies and tensors are then mapped and unmapped
    on their own, so memory a burst of big requests used goes back to the system afterwards
    (the default threshold rises to the largest block ever freed, keeping such blocks in the
    heap for good)."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD


def trim_malloc() -> None:
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
