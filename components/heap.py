"""Keeping freed memory in the process while a model trains on the CPU (glibc on Linux).

glibc's ``malloc`` serves blocks above its mmap threshold (at most 32 MB) with ``mmap`` and unmaps them when they are
freed, and trims the top of its heap once 128 KB of it is free. A training step on the CPU allocates and frees
activations of tens of megabytes (a batch of 32 Lite0 inputs at 224 px: 51 MB for one early feature map), so every
step gave its memory back to the kernel and faulted it in again, zeroed, on the next: the `cpu` profile's run spent
765 of its 3,161 CPU seconds in the kernel, with 365 million page faults. :func:`freed_memory_kept` turns both off
for the duration of a training (``mallopt``: no mmap, no trimming), so freed blocks are reused from the heap; on
exit it sets glibc's defaults again and hands what is free back (``malloc_trim``). The arithmetic is untouched.

Measured on 2 cores (``docs/benchmarks.md``): an epoch of Lite0 at 224 px on 384 images in 34-37 s instead of
42-50 s, system time 0-2 s instead of 13-21 s, with 0.8 GB more resident memory at the peak (the heap keeps its
high-water mark until the training ends). Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters and glibc's defaults for them (malloc/malloc.h, mallopt(3))
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GB of free heap top before glibc would give any back


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within the block, glibc keeps freed memory for reuse instead of returning it to the kernel; yields whether
    it applies (glibc only). Nested uses keep it until the outermost one ends."""
    global _depth
    libc = glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


_depth = 0  # trainings in progress (threads of one process share the heap)
_lock = threading.Lock()
