"""Cache partitions: per client credential with passthrough, shared otherwise."""

from __future__ import annotations

import stat
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.app import create_app
from proxy.auth.partition import ANONYMOUS, KEY_FILE, SHARED, Partitioner, load_key, partition
from tests.auth.conftest import settings_for


def request_with(app: web.Application, headers: dict[str, str]) -> web.Request:
    return make_mocked_request("GET", "/dicom-web/studies", headers=headers, app=app)


def test_shared_partition_unless_passthrough(tmp_path: Path) -> None:
    app = create_app(
        settings_for(
            "http://upstream/dicom-web", tmp_path, upstream_auth="bearer", upstream_token="t-1"
        )
    )
    assert partition(request_with(app, {"Authorization": "Bearer a"})) == SHARED
    assert partition(request_with(app, {})) == SHARED
    assert not (tmp_path / "data" / KEY_FILE).exists()


def test_passthrough_partitions_by_credential_without_revealing_it(tmp_path: Path) -> None:
    app = create_app(
        settings_for("http://upstream/dicom-web", tmp_path, upstream_auth="passthrough")
    )
    alice = partition(request_with(app, {"Authorization": "Bearer alice-token"}))
    again = partition(request_with(app, {"Authorization": "Bearer alice-token"}))
    bob = partition(request_with(app, {"Authorization": "Bearer bob-token"}))
    cookie = partition(request_with(app, {"Authorization": "Bearer alice-token", "Cookie": "s=1"}))
    assert alice == again
    assert len({alice, bob, cookie, SHARED, ANONYMOUS}) == 5
    assert "alice" not in alice and alice.startswith("c-")
    assert partition(request_with(app, {})) == ANONYMOUS


def test_key_is_persisted_private_and_survives_restarts(tmp_path: Path) -> None:
    first = load_key(tmp_path)
    mode = stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert load_key(tmp_path) == first
    partitioner = Partitioner(first)
    assert Partitioner(load_key(tmp_path)).of("Bearer x", None) == partitioner.of("Bearer x", None)
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary left


def test_value_pairs_cannot_collide() -> None:
    partitioner = Partitioner(b"k" * 32)
    assert partitioner.of("ab", "c") != partitioner.of("a", "bc")


def test_unwritable_data_dir_falls_back_to_a_process_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert len(load_key(blocker / "data")) == 32
