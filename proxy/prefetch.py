"""``dicomweb-proxy prefetch``: warm a running proxy's cache by reading through it.

For each study (given with ``--study`` or found by a QIDO-RS ``--query``): the study
metadata (PS3.18 section 10.4, ``/studies/{s}/metadata``), then every instance
(``/studies/{s}/series/{se}/instances/{i}``), ``--concurrency`` requests at a time.
Bodies are read and discarded as they stream.  Progress goes to stderr
(:mod:`proxy.progress`), the summary to stdout.  Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from proxy.progress import Progress, Reporter, StudyProgress, summary
from proxy.settings import parse_positive_int, parse_url

DEFAULT_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK = 256 * 1024
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


@dataclass(frozen=True)
class Options:
    proxy_url: str
    studies: tuple[str, ...] = ()
    query: str | None = None
    concurrency: int = 8
    accept: str = DEFAULT_ACCEPT
    token: str | None = None


@dataclass(frozen=True)
class StudyJob:
    study: str


@dataclass(frozen=True)
class InstanceJob:
    study: str
    series: str
    instance: str


Job = StudyJob | InstanceJob


# -- command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy-url", required=True, help="the proxy's DICOMweb base URL")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", nargs="+", action="extend", metavar="UID", help="study UIDs")
    which.add_argument("--query", help="QIDO-RS study query, e.g. 'ModalitiesInStudy=CT'")
    parser.add_argument("--concurrency", default="8", help="requests in flight (default 8)")
    parser.add_argument("--accept", default=DEFAULT_ACCEPT, help="Accept for instances")
    parser.add_argument("--token-file", help="file with a bearer token for the proxy")


def options_from(flags: argparse.Namespace) -> Options:
    """Raises ValueError naming the option."""
    try:
        url = parse_url(flags.proxy_url)
    except ValueError as exc:
        raise ValueError(f"--proxy-url: {exc}") from None
    try:
        concurrency = parse_positive_int(flags.concurrency)
    except ValueError as exc:
        raise ValueError(f"--concurrency: {exc}") from None
    token = Path(flags.token_file).read_text().strip() if flags.token_file else None
    return Options(url, tuple(flags.study or ()), flags.query, concurrency, flags.accept, token)


def main(flags: argparse.Namespace) -> int:
    try:
        options = options_from(flags)
    except (ValueError, OSError) as exc:
        print(f"dicomweb-proxy prefetch: {exc}", file=sys.stderr)
        return 2
    try:
        progress = asyncio.run(run(options, Reporter(sys.stderr)))
    except KeyboardInterrupt:
        return 130
    print(summary(progress))
    return 1 if progress.failures else 0


# -- the work -------------------------------------------------------------------------


async def run(options: Options, reporter: Reporter) -> Progress:
    progress = Progress()
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        prefetcher = Prefetcher(session, URL(options.proxy_url), options, progress, reporter)
        await prefetcher.run()
    reporter.finish(progress)
    return progress


class Prefetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: URL,
        options: Options,
        progress: Progress,
        reporter: Reporter,
    ) -> None:
        self.session = session
        self.base = base
        self.options = options
        self.progress = progress
        self.reporter = reporter
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.studies: dict[str, StudyProgress] = {}

    async def run(self) -> None:
        studies = list(self.options.studies) or await self.find_studies()
        self.progress.studies_total = self.progress.metadata_pending = len(studies)
        for uid in studies:
            self.studies[uid] = StudyProgress()
            self.queue.put_nowait(StudyJob(uid))
        workers = [asyncio.create_task(self.work()) for _ in range(self.options.concurrency)]
        try:
            await self.queue.join()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def find_studies(self) -> list[str]:
        """QIDO-RS ``/studies?{query}`` (PS3.18 section 10.6)."""
        pairs = urllib.parse.parse_qsl(self.options.query or "", keep_blank_values=True)
        url = (self.base / "studies").with_query(pairs)
        found = await self.get_json(url, f"query {self.options.query!r}")
        return [uid for uid in _values(found or [], _STUDY_UID) if uid]

    async def work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                if isinstance(job, StudyJob):
                    await self.study_metadata(job.study)
                else:
                    await self.instance(job)
            finally:
                self.queue.task_done()
            self.reporter.update(self.progress)

    async def study_metadata(self, study: str) -> None:
        url = self.base / "studies" / study / "metadata"
        datasets = await self.get_json(url, f"study {study} metadata")
        self.progress.metadata_pending -= 1
        if datasets is None:
            return
        jobs = [
            InstanceJob(study, series, sop)
            for series, sop in _instances(datasets)
            if series and sop
        ]
        self.studies[study].remaining = len(jobs)
        self.progress.instances_total += len(jobs)
        for job in jobs:
            self.queue.put_nowait(job)
        if not jobs:
            self.study_done(study)

    async def instance(self, job: InstanceJob) -> None:
        url = self.base.joinpath(
            "studies", job.study, "series", job.series, "instances", job.instance
        )
        state = self.studies[job.study]
        try:
            async with self.session.get(url, headers={"Accept": self.options.accept}) as response:
                if response.status != 200:
                    self.fail(f"instance {job.instance}: HTTP {response.status}")
                else:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        state.bytes += len(chunk)
                        self.progress.bytes += len(chunk)
                    state.instances += 1
                    self.progress.instances_done += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.fail(f"instance {job.instance}: {type(exc).__name__}")
        state.remaining -= 1
        if state.remaining == 0:
            self.study_done(job.study)

    async def get_json(self, url: URL, what: str) -> Any:
        """A JSON answer (``[]`` for 204: nothing matched), None with the failure recorded."""
        try:
            headers = {"Accept": "application/dicom+json"}
            async with self.session.get(url, headers=headers) as response:
                if response.status == 204:
                    return []
                if response.status != 200:
                    self.fail(f"{what}: HTTP {response.status}")
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.fail(f"{what}: {type(exc).__name__}")
            return None

    def fail(self, message: str) -> None:
        self.progress.failures.append(message)

    def study_done(self, study: str) -> None:
        self.progress.studies_done += 1
        state = self.studies[study]
        self.reporter.study_done(study, state, self.progress)


def _values(datasets: Any, tag: str) -> Iterator[str]:
    for dataset in datasets if isinstance(datasets, list) else []:
        values = dataset.get(tag, {}).get("Value") if isinstance(dataset, dict) else None
        yield str(values[0]) if values else ""


def _instances(datasets: Any) -> Iterator[tuple[str, str]]:
    yield from zip(_values(datasets, _SERIES_UID), _values(datasets, _SOP_UID), strict=True)
