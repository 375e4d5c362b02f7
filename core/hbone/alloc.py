"""glibc malloc tuning for the HBONE data path (process-wide, applied once).

The data path allocates and frees buffers of 16 KiB - 1 MiB many thousand
times per second (ciphertext out of OpenSSL's memory BIO, decrypted DATA
bodies, socket reads). glibc serves blocks above its mmap threshold with a
fresh mmap and trims freed memory at the heap top above its trim threshold,
so each such buffer costs ~64 page faults: measured 74 us vs 12 us per
256 KiB allocate/fill/free cycle, and up to a third of an HBONE proxy's CPU
(docs/bench/hbone.md). Raising both thresholds keeps those blocks in the heap.
Applied by the TLS layer on first use; an operator's own MALLOC_* environment
settings win. A no-op where libc has no mallopt (not glibc).
"""

from __future__ import annotations

import ctypes
import os

# Blocks up to this size come from the heap, not a fresh mmap: above our
# largest data-path buffer (a 1 MiB DATA frame body plus its header).
MMAP_THRESHOLD = 4 * 1024 * 1024
# Freed memory at the heap top is returned to the kernel only above this:
# bounds what an idle process keeps (16 MiB) while busy ones stop faulting.
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1          # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_done = False


def tune_allocator() -> bool:
    """Apply the thresholds once per process. Returns True if applied now."""
    global _done
    if _done:
        return False
    _done = True
    if any(name in os.environ for name in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
