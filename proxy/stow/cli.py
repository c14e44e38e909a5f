"""``dicomweb-proxy dead-letter list|show ID|replay [ID…|--all]|drop ID…`` (SPEC section 1).

Works on the dead-letter directory the options name, so it runs next to a serving
proxy or instead of one; ``replay`` sends through the configured upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import uuid

from proxy import headers as hdrs
from proxy.auth import credentials_from
from proxy.errors import ProxyError
from proxy.settings import Settings
from proxy.stow.dead_letter import DeadLetter
from proxy.stow.service import Replayed, replay
from proxy.upstream import Upstream

ACTIONS = ("list", "show", "replay", "drop")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("ids", nargs="*", metavar="ID")
    parser.add_argument("--all", action="store_true", help="replay every entry")


def run(config: Settings, flags: argparse.Namespace) -> int:
    dead_letter = DeadLetter(config.dead_letter_path)
    try:
        if flags.action == "list":
            for record in dead_letter.records():
                print(_line(record))
        elif flags.action == "show":
            for entry_id in flags.ids:
                print(json.dumps(dead_letter.record(entry_id), indent=2))
        elif flags.action == "drop":
            for entry_id in flags.ids:
                dead_letter.drop(entry_id)
                print(f"dropped {entry_id}")
        else:
            ids = [str(r["id"]) for r in dead_letter.records()] if flags.all else flags.ids
            return asyncio.run(_replay(config, ids))
    except ProxyError as exc:
        print(f"dicomweb-proxy: {exc.detail}")
        return 1
    return 0


def _line(record: dict[str, object]) -> str:
    return (
        f"{record['id']}  {record['time']}  study={record['study']}  "
        f"sop={record['sop_instance']}  status={record['status']}  "
        f"reason={record['reason']}  attempts={record['attempts']}"
    )


async def _replay(config: Settings, ids: list[str]) -> int:
    # The same upstream credentials as ``serve``: a guarded archive needs them too.
    upstream = Upstream(config, credentials_from(config))
    failures = 0
    try:
        for entry_id in ids:
            headers = {"X-Request-ID": uuid.uuid4().hex, "Via": hdrs.VIA}
            result: Replayed = await replay(entry_id, config, upstream, headers)
            print(json.dumps(dataclasses.asdict(result)))
            failures += not result.stored
    finally:
        await upstream.close()
    return 1 if failures else 0
