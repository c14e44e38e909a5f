"""proxy.malloc: relayed body pieces reuse heap memory instead of fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy import malloc
from proxy.upstream import CHUNK, READ_BUFFER

# Sixteen relays each holding a 256 KiB piece, then all done, 100 times over (as under
# load: pieces alive together, then freed together); count minor page faults.
PIECES = """
import resource, sys
from proxy import malloc
if sys.argv[1] == "tuned":
    assert malloc.tune()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    pieces = [bytearray(256 * 1024) for _ in range(16)]
    del pieces
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PIECES, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_process_reuses_memory_for_body_pieces() -> None:
    # 1,600 pieces of 64 pages each: glibc's defaults fault most pages in again.
    assert faults("default") > 100 * 16 * 32
    assert faults("tuned") < 16 * 64 * 2


def test_thresholds_leave_room_for_the_relay_pieces() -> None:
    """Pieces read from the upstream must stay below the mmap threshold."""
    assert max(CHUNK, READ_BUFFER) <= malloc.MMAP_THRESHOLD
    assert 4 * malloc.MMAP_THRESHOLD <= malloc.TRIM_THRESHOLD
