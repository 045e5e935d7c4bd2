"""Keep freed host memory in the process, so that a CPU training step does not page-fault.

Every step allocates and frees the same large buffers (activations, gradients,
augmentation intermediates). With glibc's defaults, malloc hands large blocks
back to the kernel (blocks above a sliding mmap threshold, and the heap's free
top above the trim threshold), so the next step touches fresh pages and takes a
page fault on each: measured on a quick-suite FixMatch (RA) run, about 8,000
minor faults a step, and 1.3x slower than with the two thresholds fixed
(docs/quick_suite.md). Fixed thresholds keep the memory in the heap for reuse.
This changes where memory comes from, never what is computed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024**2  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit); larger blocks are still mmapped
TRIM_THRESHOLD = 1024**3  # the free top of the heap goes back to the kernel only above 1 GiB
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True if they were set.

    Does nothing on other C libraries, or when the user set either threshold in
    the environment (glibc's ``MALLOC_*_`` variables).
    """
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
