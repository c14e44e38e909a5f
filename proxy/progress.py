"""What ``dicomweb-proxy prefetch`` has done so far, and how it is shown: a redrawn bar on
a terminal (studies, instances, bytes, rate, ETA), one line per finished study
otherwise, and a summary at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TextIO

from proxy.settings import format_size


@dataclass
class StudyProgress:
    """One study's instances still to fetch, fetched, and their bytes."""

    remaining: int = 0
    instances: int = 0
    bytes: int = 0


@dataclass
class Progress:
    """What has been done so far; ``instances_total`` grows as metadata arrives."""

    studies_total: int = 0
    studies_done: int = 0
    metadata_pending: int = 0
    instances_total: int = 0
    instances_done: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)


class Reporter:
    """A redrawn bar on a terminal; plain lines (one per finished study) otherwise."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._drawn_at = 0.0

    def update(self, progress: Progress) -> None:
        if self.tty and time.monotonic() - self._drawn_at >= 0.1:
            self._drawn_at = time.monotonic()
            self.stream.write("\r\x1b[K" + progress_bar(progress))
            self.stream.flush()

    def study_done(self, study: str, state: StudyProgress, progress: Progress) -> None:
        line = (
            f"study {study}: {state.instances} instances, {format_size(state.bytes)} "
            f"({progress.studies_done}/{progress.studies_total} studies)"
        )
        self.stream.write(("\r\x1b[K" + line + "\n") if self.tty else line + "\n")
        self.stream.flush()

    def finish(self, progress: Progress) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + progress_bar(progress) + "\n")
            self.stream.flush()


def progress_bar(progress: Progress, width: int = 24) -> str:
    total = progress.instances_total
    done = progress.instances_done
    filled = int(width * done / total) if total else 0
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] "
        f"{progress.studies_done}/{progress.studies_total} studies  "
        f"{done}/{total} instances  {format_size(progress.bytes)}  "
        f"{format_size(progress.bytes / progress.elapsed)}/s  ETA {eta(progress)}"
    )


def eta(progress: Progress) -> str:
    """Known only once every study's instance list is in and something was fetched."""
    if progress.metadata_pending or not progress.instances_done:
        return "?"
    rate = progress.instances_done / progress.elapsed
    seconds = int((progress.instances_total - progress.instances_done) / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def summary(progress: Progress) -> str:
    lines = [
        f"prefetched {progress.studies_done} studies, {progress.instances_done} instances, "
        f"{format_size(progress.bytes)} in {progress.elapsed:.1f} s "
        f"({format_size(progress.bytes / progress.elapsed)}/s); "
        f"{len(progress.failures)} failed"
    ]
    lines += [f"  {failure}" for failure in progress.failures[:20]]
    if len(progress.failures) > 20:
        lines.append(f"  ... and {len(progress.failures) - 20} more")
    return "\n".join(lines)
