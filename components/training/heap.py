"""Keeping freed memory in the process while a model trains on the CPU (glibc on Linux).

glibc's ``malloc`` serves blocks above its mmap threshold (at most 32 MB) with ``mmap`` and unmaps them when they are
freed, and trims the top of its heap once enough of it is free. A training step on the CPU allocates and frees
activations of tens of megabytes (one early Lite0 feature map of a 224 px batch of 32 is 51 MB), so every step gave
its memory back to the kernel and faulted it in again, zeroed, on the next: the `cpu` profile's run spent 765 of
its 3,161 CPU seconds in the kernel, with 365 million page faults. :func:`freed_memory_kept` turns both off for the
duration of a training (``mallopt``: no mmap, no trimming), so freed blocks are reused from the heap. The
arithmetic is untouched.

On exit it cannot give glibc back its *dynamic* thresholds (any ``mallopt`` of them turns that rule off for the
process), so it sets the values the rule reaches once a large block has been freed, as every training frees them:
mmap above 32 MB, trim above 64 MB; then it hands the free heap back to the kernel (``malloc_trim``). It does
nothing where the allocator is not glibc's (macOS, Windows, musl, a jemalloc or tcmalloc in ``LD_PRELOAD``) or
where the user tuned glibc's malloc through the environment (``MALLOC_*_``, ``GLIBC_TUNABLES``). The setting holds
for the whole process while any training in it runs, other threads included.

Measured on 2 cores (``docs/benchmarks.md``): a training of 2 epochs of Lite0 at 224 px on 384 images in 33-36 s
instead of 42-50 s, system time 2 s instead of 13-21, with 0.5 GB more resident memory at the peak (the heap keeps
its high-water mark until the training ends).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters (malloc/malloc.h, mallopt(3)) and glibc's defaults and dynamic maxima on 64-bit
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_MMAP_MAX = 65536
DYNAMIC_MMAP_THRESHOLD_MAX = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB * sizeof(long)
DYNAMIC_TRIM_THRESHOLD_MAX = 2 * DYNAMIC_MMAP_THRESHOLD_MAX  # the dynamic rule keeps trim at twice the mmap threshold
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GB of free heap top before glibc would give any back


def glibc() -> ctypes.CDLL | None:
    """The C library when ``malloc`` is glibc's own (not preloaded from another allocator), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):
        return None
    in_use = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    return libc if in_use == ctypes.cast(libc.malloc, ctypes.c_void_p).value else None


def _tuned_by_user() -> bool:
    return any(name.startswith("MALLOC_") for name in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within the block, glibc keeps freed memory for reuse instead of returning it to the kernel; yields whether
    that applies. Nested uses keep it until the outermost one ends."""
    global _depth
    libc = None if _tuned_by_user() else glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0 and not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
            libc = None  # refused: nothing to undo beyond what glibc did not take
        else:
            _depth += 1
    if libc is None:
        yield False
        return
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_MMAP_THRESHOLD, DYNAMIC_MMAP_THRESHOLD_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DYNAMIC_TRIM_THRESHOLD_MAX)
                libc.malloc_trim(0)


_depth = 0  # trainings in progress (threads of one process share the heap)
_lock = threading.Lock()
