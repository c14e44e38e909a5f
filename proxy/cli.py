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

from proxy import __version__, auth, settings, workers
from proxy.settings import Settings, SettingsError
from proxy.stow import cli as stow_cli

log = logging.getLogger("dicomweb_proxy")

SUBCOMMANDS = ("serve", "check", "dead-letter")


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in {"-h", "--help", "--version"}):
        args.insert(0, "serve")
    flags = build_parser().parse_args(args)
    needs_upstream = flags.command != "dead-letter" or flags.action == "replay"
    try:
        config = settings.load(flags, os.environ, require_upstream=needs_upstream)
        auth.validate(config)
    except SettingsError as exc:
        print(f"dicomweb-proxy: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    if flags.command == "dead-letter":
        return stow_cli.run(config, flags)
    runner: Callable[[Settings], int] = {"serve": serve, "check": check}[flags.command]
    return runner(config)


def configure_logging(config: Settings) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def serve(config: Settings) -> int:
    log.info("starting with %s", config.masked())
    return workers.run(config)


def check(config: Settings) -> int:
    """Reach the upstream with the configured auth; say which step failed."""
    from proxy.health import diagnose
    from proxy.upstream import Upstream

    async def probe() -> list[tuple[str, bool, str]]:
        upstream = Upstream(config, auth.credentials_from(config))
        try:
            return await diagnose(config, upstream)
        finally:
            await upstream.close()

    findings = asyncio.run(probe())
    for step, passed, detail in findings:
        print(f"{step}: {'ok' if passed else 'FAILED'} - {detail}")
    return 0 if all(passed for _, passed, _ in findings) else 1
