"""Prometheus client's multiprocess mode: the metrics of ``--workers`` processes.

Several worker processes (``--workers`` > 1) share their metrics through files in one
directory: the parent calls :func:`reset_multiprocess_dir` once before starting workers,
each worker builds its ``Metrics(multiprocess_dir=...)`` (which calls
:func:`use_multiprocess`), and a scrape of any worker reads every worker's files
(:func:`read_multiprocess`) and so returns the sum over all of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, values

from proxy.settings import Settings


def multiprocess_dir(settings: Settings) -> Path | None:
    """Where workers share their metrics: ``<data-dir>/metrics`` with ``--workers`` > 1."""
    return Path(settings.data_dir) / "metrics" if settings.workers > 1 else None


def reset_multiprocess_dir(directory: Path) -> None:
    """Start-up, in the parent, before any worker: stale files would add old counts."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def read_multiprocess(directory: Path) -> CollectorRegistry:
    """Every worker's metrics, summed (gauges: the most recent value)."""
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]  # untyped upstream
        merged, path=str(directory)
    )
    return merged


def use_multiprocess(directory: Path) -> None:
    """Make metrics created from now on in this process write to ``directory``.

    prometheus-client picks its value class from ``PROMETHEUS_MULTIPROC_DIR`` when it
    is first imported; a worker switches after the fact, before creating any metric.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == str(directory):
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
