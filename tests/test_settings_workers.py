"""``--workers auto`` (the container image's default): one worker per usable CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.settings import available_cpus, parse_workers

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no quota: the affinity mask decides
        ("100000 100000\n", 1),  # docker --cpus=1
        ("50000 100000\n", 1),  # half a CPU still gets one worker
        ("150000 100000\n", min(2, AFFINITY)),  # 1.5 CPUs round up, never above affinity
        ("garbage\n", AFFINITY),
    ],
)
def test_available_cpus_honours_the_cgroup_quota(
    tmp_path: Path, cpu_max: str, expected: int
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert available_cpus(path) == expected


def test_available_cpus_without_cgroup_v2_uses_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "missing") == AFFINITY


def test_parse_workers() -> None:
    assert parse_workers("3") == 3
    assert parse_workers(" Auto ") == available_cpus()
    with pytest.raises(ValueError):
        parse_workers("0")
    with pytest.raises(ValueError):
        parse_workers("many")
