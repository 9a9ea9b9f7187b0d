"""Once :func:`keep_freed_memory` has run, memory a step frees is reused by the next step, not faulted in again."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")

# What a training step does to the allocator: take a few blocks of tens of megabytes (activations, gradients), write
# them, free them all. Prints the minor page faults of three such steps as glibc is by default, then of three more
# once freed memory is kept (each after a step that warms the heap up).
STEPS = """
import ctypes, resource
from kd.core.memory import keep_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def page_faults(steps, blocks=4, size=20 * 2**20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        pointers = [libc.malloc(size) for _ in range(blocks)]
        for pointer in pointers:
            libc.memset(pointer, 1, size)
        for pointer in pointers:
            libc.free(pointer)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
page_faults(1)
default = page_faults(3)
assert keep_freed_memory()
page_faults(1)
print(default, page_faults(3))
"""


def test_freed_memory_is_reused_not_faulted_in_again() -> None:
    done = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, check=True)
    default, kept = map(int, done.stdout.split())
    assert default > 3 * 80 * 2**20 // 4096 // 2, "glibc's defaults no longer return these blocks to the kernel"
    assert kept < default // 100, f"{kept} page faults with freed memory kept, {default} without"
