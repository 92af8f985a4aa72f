"""Freed memory kept in the process during training (glibc): observed through the process's resident memory."""

from __future__ import annotations

import os

import pytest
import torch

from components.heap import freed_memory_kept, glibc

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MB): by default freed straight back to the kernel

pytestmark = pytest.mark.skipif(glibc() is None, reason="glibc's malloc only")


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _kept_after_free() -> int:
    """Resident bytes a 64 MB tensor leaves behind once written to and freed."""
    before = _resident()
    block = torch.ones(BLOCK // 4)  # float32: every page written
    del block
    return _resident() - before


def test_a_freed_block_stays_resident_inside_and_goes_back_after() -> None:
    assert _kept_after_free() < BLOCK // 4  # glibc's default: unmapped at once
    with freed_memory_kept() as applies:
        assert applies
        assert _kept_after_free() > BLOCK * 3 // 4  # kept in the heap for the next step
        inside = _resident()
        with freed_memory_kept():
            pass
        assert _resident() > inside - BLOCK // 4  # a nested use ending gives nothing back
    assert _resident() < inside - BLOCK // 2  # the outermost one does (malloc_trim)
    assert _kept_after_free() < BLOCK // 4  # and glibc's defaults are back
