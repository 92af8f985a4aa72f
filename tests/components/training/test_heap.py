"""Freed memory kept in the process during training (glibc), observed through glibc's own counters (mallinfo2) in a
fresh interpreter: in a test process, earlier tests can leave free heap chunks large enough to serve any block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.training.heap import glibc

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(glibc() is None, reason="glibc's malloc only")

PROBE = """
import ctypes, json
import torch
from components.training.heap import freed_memory_kept, glibc

BLOCK = 512 * 2**20  # far above glibc's largest mmap threshold (32 MB); torch.empty touches no page of it


class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = glibc()
libc.mallinfo2.restype = Mallinfo2


def mmapped_while_alive():
    before = libc.mallinfo2().hblkhd
    block = torch.empty(BLOCK // 4)
    mmapped = libc.mallinfo2().hblkhd - before
    del block
    return mmapped >= BLOCK


seen = {"default": mmapped_while_alive()}
with freed_memory_kept() as applies:
    seen["applies"] = applies
    seen["inside"] = mmapped_while_alive()
    seen["kept free"] = libc.mallinfo2().fordblks >= BLOCK
    with freed_memory_kept():
        pass
    seen["after a nested one"] = mmapped_while_alive()
seen["after"] = mmapped_while_alive()
print(json.dumps(seen))
"""


def _probe(**env: str) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env})  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_inside_and_are_mmapped_again_after() -> None:
    assert _probe() == {"default": True, "applies": True, "inside": False, "kept free": True,
                        "after a nested one": False, "after": True}  # fmt: skip


def test_a_user_tuned_malloc_is_left_alone() -> None:
    seen = _probe(MALLOC_ARENA_MAX="2")
    assert not seen["applies"] and seen["inside"] and seen["after"]
