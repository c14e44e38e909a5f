"""``dicomweb-proxy cache stats|purge [--study UID]`` (SPEC section 1).

Works on the cache directory itself, so it also works while the proxy runs: the index
is SQLite and every worker already shares it.  A running proxy may still answer a purged
entry from its in-memory view for a moment; its next open of the body finds it gone.
"""

from __future__ import annotations

import argparse
import json

from proxy.cache.store import Store
from proxy.dicomweb.uri import is_valid_uid
from proxy.settings import Settings, SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("stats", "purge"))
    parser.add_argument("--study", metavar="UID", help="purge only this study's entries")


def run(settings: Settings, flags: argparse.Namespace) -> int:
    if flags.study is not None and not is_valid_uid(flags.study):
        raise SettingsError("--study: not a valid UID")
    store = Store.open(settings.cache_path, settings.cache_size)
    try:
        if flags.action == "stats":
            print(json.dumps({**store.stats(), "size_limit": settings.cache_size}))
        elif flags.study:
            removed = store.purge([f"s:{flags.study}", f"i:{flags.study}"])
            print(f"removed {removed} entries of study {flags.study}")
        else:
            print(f"removed {store.purge()} entries")
    finally:
        store.close()
    return 0
