"""glibc malloc settings for a process that relays large bodies in pieces.

By default glibc gives freed memory at the top of its heap back to the kernel once more
than its trim threshold is free, and serves allocations above its mmap threshold with
fresh mappings; either way the next body piece lands in pages the kernel must fault in
and zero again.  Relaying 512 KiB bodies in 256 KiB pieces, that was 45 minor page
faults per pass-through request and a sixth of the proxy's CPU for it (1,009 -> 832 us
per request once they were gone).

:func:`tune` fixes both thresholds (glibc then stops moving them, see mallopt(3)): pieces
up to :data:`MMAP_THRESHOLD` come from the heap, and up to :data:`TRIM_THRESHOLD` of
free heap is kept for the next ones.  Memory stays bounded: what is kept is what a
moment of peak load used.  Elsewhere than on glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("dicomweb_proxy")

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune() -> bool:
    """Set the thresholds for this process; False where there is no glibc mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if not done:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    return bool(done)
