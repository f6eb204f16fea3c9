"""Freed CPU memory kept in the process for the next step's tensors.

glibc's malloc serves every request above its mmap threshold (128 KiB at
first, raised up to 32 MiB as such blocks are freed) with fresh pages from
``mmap`` and gives them back on ``free``. A training step frees and allocates
the same large activations every step, so every step pays a page fault per
4 KiB page and the kernel's zeroing of it, again. Measured on a 2-core VM
(``bench/bench_allocator.py``, ``bench/results-allocator-cpu.md``): a new
64 MiB tensor took 15.0 ms against 3.8 ms for a copy into an existing one; an
EL-DARTS search step at batch 256 took 609,011 page faults and 1.11 s of
system CPU time with glibc's defaults, 20,466 and 0.05 s kept (6.23 against
5.82 s per step). PyTorch's CPU performance guide recommends swapping the
allocator (jemalloc, tcmalloc) for this reason; eldarts keeps glibc and sets
two of its parameters with ``mallopt(3)``: requests up to 1 GiB come from the
heap, and the heap is not trimmed, so a step reuses the pages the previous
one freed (after the first few steps: measured stable peak memory over 12
steps). The process keeps its peak memory until it exits.

``runtime.allocator: system`` leaves malloc as it is. Other C libraries
(macOS, musl) and processes whose allocator was swapped (``LD_PRELOAD``) are
left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
HEAP_UP_TO = 1 << 30  # requests above 1 GiB still get their own mapping

_applied: Optional[bool] = None


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory (once per process); True if it now does."""
    global _applied
    if _applied is not None:
        return _applied
    libc = _glibc()
    _applied = False
    if libc is not None and hasattr(libc, "mallopt"):
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, HEAP_UP_TO) == 1 or libc.mallopt(M_MMAP_MAX, 0) == 1
        _applied = bool(mmap_ok and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1)
    return _applied


def configure(setting: str, device_type: str) -> bool:
    """``runtime.allocator`` for a run on ``device_type``: ``auto`` keeps freed memory on the CPU."""
    if setting == "auto" and device_type == "cpu":
        return keep_freed_memory()
    return False
