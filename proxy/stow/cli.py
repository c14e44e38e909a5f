"""``dicomweb-proxy dead-letter list|show ID|replay [ID…|--all]|drop ID…`` (SPEC section 1).

Works on the dead-letter directory the options name, so it runs next to a serving
proxy or instead of one; ``replay`` sends through the configured upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json

from proxy.auth import credentials_from
from proxy.errors import ProxyError
from proxy.settings import Settings
from proxy.stow.service import DeadLetterService
from proxy.upstream import Upstream

ACTIONS = ("list", "show", "replay", "drop")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("ids", nargs="*", metavar="ID")
    parser.add_argument("--all", action="store_true", help="replay every entry")


def run(config: Settings, flags: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(config, flags))
    except ProxyError as exc:
        print(f"dicomweb-proxy: {exc.detail}")
        return 1


async def _run(config: Settings, flags: argparse.Namespace) -> int:
    if flags.action == "replay":
        return await _replay(config, flags)
    dead_letters = DeadLetterService(config)
    if flags.action == "list":
        for record in await dead_letters.entries():
            print(_line(record))
    elif flags.action == "show":
        for entry_id in flags.ids:
            print(json.dumps(await dead_letters.entry(entry_id), indent=2))
    else:
        for entry_id in flags.ids:
            await dead_letters.drop(entry_id)
            print(f"dropped {entry_id}")
    return 0


def _line(record: dict[str, object]) -> str:
    return (
        f"{record['id']}  {record['time']}  study={record['study']}  "
        f"sop={record['sop_instance']}  status={record['status']}  "
        f"reason={record['reason']}  attempts={record['attempts']}"
    )


async def _replay(config: Settings, flags: argparse.Namespace) -> int:
    # The same upstream credentials as ``serve``: a guarded archive needs them too.
    upstream = Upstream(config, credentials_from(config))
    dead_letters = DeadLetterService(config, upstream)
    failures = 0
    try:
        ids = [str(r["id"]) for r in await dead_letters.entries()] if flags.all else flags.ids
        for entry_id in ids:
            result = await dead_letters.replay(entry_id)
            print(json.dumps(dataclasses.asdict(result)))
            failures += not result.stored
    finally:
        await upstream.close()
    return 1 if failures else 0
