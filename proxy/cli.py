"""The ``dicomweb-proxy`` command: parse the command line, run a subcommand.

Only this module turns flags, ``DICOMWEB_PROXY_*`` and the TOML file into
:class:`Settings`; an invalid value stops start-up with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from proxy import __version__, auth, log_setup, prefetch, settings, workers
from proxy.cache import cli as cache_cli
from proxy.settings import Settings, SettingsError
from proxy.stow import cli as stow_cli

log = logging.getLogger("dicomweb_proxy")

SUBCOMMANDS = ("serve", "check", "cache", "dead-letter", "prefetch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomweb-proxy",
        description="Caching reverse proxy and sidecar for DICOMweb (QIDO-RS, WADO-RS, STOW-RS).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the proxy (the default)")
    settings.add_arguments(serve)
    check = commands.add_parser("check", help="check the configuration and the upstream")
    settings.add_arguments(check)
    dead_letter = commands.add_parser("dead-letter", help="inspect and replay failed STOW")
    stow_cli.add_arguments(dead_letter)
    settings.add_arguments(dead_letter)
    cache = commands.add_parser("cache", help="cache statistics, or purge it")
    cache_cli.add_arguments(cache)
    settings.add_arguments(cache)
    warm = commands.add_parser("prefetch", help="warm a running proxy's cache through it")
    prefetch.add_arguments(warm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in {"-h", "--help", "--version"}):
        args.insert(0, "serve")
    flags = build_parser().parse_args(args)
    if flags.command == "prefetch":  # a client of a running proxy: no proxy settings
        return prefetch.main(flags)
    needs_upstream = flags.command in {"serve", "check"} or getattr(flags, "action", "") == "replay"
    try:
        config = settings.load(flags, os.environ, require_upstream=needs_upstream)
        auth.validate(config)
        configure_logging(config)
        if flags.command == "cache":
            return cache_cli.run(config, flags)
    except SettingsError as exc:
        print(f"dicomweb-proxy: {exc}", file=sys.stderr)
        return 2
    if flags.command == "dead-letter":
        return stow_cli.run(config, flags)
    runner: Callable[[Settings], int] = {"serve": serve, "check": check}[flags.command]
    return runner(config)


def configure_logging(config: Settings) -> None:
    log_setup.configure(config)


def serve(config: Settings) -> int:
    log.info("starting with %s", config.masked())
    return workers.run(config)


def check(config: Settings) -> int:
    """Print one line per check; exit 1 naming what failed."""
    from proxy import check as checks

    results = asyncio.run(checks.run(config))
    for result in results:
        print(result.line())
    failed = [result.name for result in results if not result.ok]
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0
