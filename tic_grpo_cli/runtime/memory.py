"""Give freed tensor memory back to the operating system (glibc's malloc, Linux).

On the CPU, torch allocates tensors with malloc. glibc serves a request of at least its
mmap threshold with a fresh mapping that `free` returns to the kernel at once, but the
threshold is dynamic: each time such a block is freed it rises to that block's size (up
to 32 MiB). After the first training step nearly every activation (a few to 30 MiB for a
135M model at 16 x 230 tokens) is below it and comes from the heap, where freed blocks stay
in the process: RSS then holds each step's activations, gradients and optimizer
temporaries long after they are gone, 2 GB over the live tensors for SmolLM2-135M at 16
completions x 150 tokens (docs/benchmarks.md, "Memory"). A fixed threshold ends the drift: every block of
`MMAP_THRESHOLD` bytes or more is mapped and unmapped on its own. The price is a page
fault per fresh page of such blocks; a step allocates the same sizes again and again, so
this is a small share of a step's time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Any

log = logging.getLogger("tic_grpo")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
# 1 MiB: tensors this large are at least a 512 x 512 float32 matrix; smaller blocks (the
# tokenizer's, Python's) stay on the fast heap.
MMAP_THRESHOLD = 1 << 20
# Parameters from which a CPU run hands freed tensor memory back to the OS:
# SmolLM2-135M's peak RSS 9.7 -> 2.7 GB (docs/benchmarks.md, "Memory"), but the page faults
# cost the 1M-parameter tiny model ~10% of its run time (37.7 s against 34.1 s for 300 steps,
# 5 interleaved pairs, 2026-12-06), where RSS is no concern.
FREE_MEMORY_FROM = 20_000_000


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD` and trim the heap above 2x that, so
    that freed tensors leave the process's RSS. Call it once, before large allocations.
    Returns False (and changes nothing) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("mallopt refused the thresholds; freed memory may stay in RSS")
    return ok


def free_memory_for(model: Any, device: Any) -> bool:
    """`return_freed_memory` for a model on the CPU of `FREE_MEMORY_FROM` parameters or more
    (call it once the model is loaded); False, changing nothing, otherwise."""
    if device.type != "cpu" or sum(p.numel() for p in model.parameters()) < FREE_MEMORY_FROM:
        return False
    return return_freed_memory()
