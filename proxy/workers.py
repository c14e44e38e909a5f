"""Run the proxy: one process, or ``--workers N`` sharing the socket and the cache.

Each worker binds the listen address with ``SO_REUSEPORT``, so the kernel spreads
connections; the disk cache (diskcache/SQLite, file locks) and the metrics directory are
shared.  The supervisor sequence:

1. remove what a crash left behind (partial fills, spool files), before any worker runs;
2. fork the workers;
3. restart a worker that dies unexpectedly (after a short pause);
4. on SIGTERM/SIGINT: pass SIGTERM on, wait for the workers' graceful shutdown.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from proxy import malloc, metrics_multiprocess, server
from proxy.app import create_app
from proxy.cache.store import Store
from proxy.settings import Settings

log = logging.getLogger("dicomweb_proxy")
RESTART_PAUSE = 1.0


def remove_leftovers(settings: Settings) -> None:
    """Step 1: partial fills and spooled uploads of a process that was killed."""
    Store.remove_leftovers(settings.cache_path)
    shutil.rmtree(settings.spool_path, ignore_errors=True)
    shared_metrics = metrics_multiprocess.multiprocess_dir(settings)
    if shared_metrics is not None:
        metrics_multiprocess.reset_multiprocess_dir(shared_metrics)


def serve_one(settings: Settings, *, reuse_port: bool = False) -> None:
    malloc.tune()
    server.run(
        create_app(settings),
        settings.listen_host,
        settings.listen_port,
        reuse_port=reuse_port,
        grace=settings.shutdown_grace,
    )


def run(settings: Settings) -> int:
    remove_leftovers(settings)
    if settings.workers == 1:
        serve_one(settings)
        return 0
    return Supervisor(settings).run()


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("fork")
        self.workers: list[BaseProcess] = []
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.workers = [self._spawn() for _ in range(self.settings.workers)]
        log.info("started %d workers", len(self.workers))
        while not self.stopping:
            multiprocessing.connection.wait([w.sentinel for w in self.workers], timeout=1)
            self._replace_dead()
        return self._shutdown()

    def _spawn(self) -> BaseProcess:
        worker = self.context.Process(target=_worker_main, args=(self.settings,), daemon=False)
        worker.start()
        return worker

    def _replace_dead(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker.exitcode is not None and not self.stopping:
                log.error("worker %s exited with %s; restarting", worker.pid, worker.exitcode)
                time.sleep(RESTART_PAUSE)
                self.workers[index] = self._spawn()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _shutdown(self) -> int:
        for worker in self.workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + 5
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.exitcode is None:
                worker.kill()
                worker.join()
        return 0


def _worker_main(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    serve_one(settings, reuse_port=True)
