"""Scale-out (SPEC section 7, section 8 last line; issue #17): the short form of
``make fleet``.

The ring model (``bench.fleet.ring``) in table-driven unit tests; the balancer configs of
``deploy/balancers/`` checked by the programs that run them; then the fleet itself on
loopback, the quick plan: Debian's haproxy on the reference config, 3 replicas, Orthanc
behind a counting relay, the three runs, plus round robin's run (a) for the comparison.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.fleet import ring, run, sim
from bench.fleet.cluster import BALANCERS, HAPROXY, HAPROXY_CONFIG, round_robin

# -- the ring model ------------------------------------------------------------------------

URI_KEYS = [
    ("/dicom-web/studies/1.2.3/series/4.5/instances/6.7", 3, b"/dicom-web/studies/1.2.3"),
    ("/dicom-web/studies/1.2.3/metadata", 3, b"/dicom-web/studies/1.2.3"),
    ("/dicom-web/studies/1.2.3", 3, b"/dicom-web/studies/1.2.3"),
    ("/dicom-web/studies/1.2.3/series?Modality=CT", 3, b"/dicom-web/studies/1.2.3"),
    ("/dicom-web/studies?PatientID=7", 3, b"/dicom-web/studies"),
    ("http://lb:8080/dicom-web/studies/1.2.3/metadata", 3, b"/dicom-web/studies/1.2.3"),
    ("/pacs/dicom-web/studies/1.2.3/frames/1", 4, b"/pacs/dicom-web/studies/1.2.3"),
    ("/studies/1.2.3/metadata", 2, b"/studies/1.2.3"),
]


@pytest.mark.parametrize(("uri", "depth", "key"), URI_KEYS)
def test_uri_key_is_what_balance_uri_depth_path_only_hashes(
    uri: str, depth: int, key: bytes
) -> None:
    assert ring.uri_key(uri, depth) == key


@pytest.mark.parametrize(
    ("base_path", "depth"), [("/dicom-web", 3), ("/pacs/dicom-web", 4), ("", 2), ("/a/b/c", 5)]
)
def test_depth_follows_the_base_path(base_path: str, depth: int) -> None:
    assert ring.depth_for(base_path) == depth


def test_sdbm_and_full_hash_are_32_bit() -> None:
    assert ring.sdbm(b"") == 0
    assert ring.sdbm(b"a") == 97
    assert ring.sdbm(b"ab") == (98 + (97 << 6) + (97 << 16) - 97) & 0xFFFFFFFF
    assert all(0 <= ring.full_hash(value) <= 0xFFFFFFFF for value in (0, 1, 2**32 - 1, 2**40))


UIDS = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(3000)]


@pytest.mark.parametrize("layout", ["2.6", "3.0"])
def test_losing_a_server_moves_only_its_own_studies(layout: str) -> None:
    table = ring.Ring(ring.fleet(4, 100), layout=layout)
    before = {uid: table.server_for(ring.study_path(uid)) for uid in UIDS}
    after = table.without("proxy-2")
    for uid, owner in before.items():
        moved = after.server_for(ring.study_path(uid))
        assert moved == owner or owner == "proxy-2"
    share = sum(1 for owner in before.values() if owner == "proxy-2") / len(UIDS)
    assert abs(share - 0.25) < 0.05


def test_the_ring_depends_on_server_ids_not_on_their_order_or_names_of_addresses() -> None:
    servers = ring.fleet(3, 100)
    shuffled = ring.Ring([servers[2], servers[0], servers[1]])
    table = ring.Ring(servers)
    assert all(
        table.server_for(ring.study_path(uid)) == shuffled.server_for(ring.study_path(uid))
        for uid in UIDS[:500]
    )
    assert abs(sum(table.shares().values()) - 1.0) < 1e-9


def test_a_retry_walks_on_past_the_server_it_avoids() -> None:
    table = ring.Ring(ring.fleet(3, 100))
    for uid in UIDS[:200]:
        hashed = ring.key_hash(ring.uri_key(ring.study_path(uid), 3))
        first = table.lookup(hashed)
        assert table.lookup(hashed, avoid=first) != first


def test_weight_100_keeps_shares_near_even() -> None:
    for replicas in (2, 3, 4, 8):
        assert sim.share_spread(replicas, 100) < 1.06


def test_simulated_loss_of_one_of_n_costs_about_one_nth() -> None:
    keys = [ring.key_hash(ring.uri_key(ring.study_path(uid), 3)) for uid in UIDS]
    for replicas in (3, 6):
        loss = sim.simulate_loss(keys, range(len(keys)), replicas)
        assert abs(loss.consistent - 1 / replicas) < 0.01
        assert loss.consistent_worst < 1 / replicas + 0.05
        assert loss.back_same_id == 0.0
        assert loss.map_based > 0.5


def test_round_robin_spreads_every_study_over_the_replicas() -> None:
    workload = sim.Workload(studies=300, opens=3000)
    sizes, trace, keys = workload.sizes(), workload.trace(), workload.keys()
    hashing = sim.simulate_hit_ratio(workload, sizes, trace, keys, 4, 0.1, "hash")
    spread = sim.simulate_hit_ratio(workload, sizes, trace, keys, 4, 0.1, "roundrobin")
    assert hashing.byte_hit_ratio > spread.byte_hit_ratio + 0.1


# -- the balancer configs, checked by the programs that run them ---------------------------

ADDRESSES = {f"DICOMWEB_PROXY_{i}": f"127.0.0.1:{9100 + i}" for i in range(3)}


def _haproxy_check(config: str) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as handle:
        handle.write(config)
        handle.flush()
        return subprocess.run(
            [HAPROXY, "-c", "-f", handle.name],
            env={**os.environ, **ADDRESSES},
            capture_output=True,
            text=True,
            timeout=30,
        )


def test_reference_haproxy_config_and_its_round_robin_twin_parse() -> None:
    text = HAPROXY_CONFIG.read_text()
    for config in (text, round_robin(text)):
        done = _haproxy_check(config)
        assert done.returncode == 0, done.stdout + done.stderr
    assert round_robin(text).count("balance roundrobin\n") == 2  # by-study and any-replica
    assert "hash-type consistent" not in round_robin(text)


def test_reference_haproxy_config_hashes_the_study_prefix_consistently() -> None:
    text = HAPROXY_CONFIG.read_text()
    assert 'balance uri depth "${DICOMWEB_HASH_DEPTH-3}" path-only' in text
    assert "hash-type consistent\n" in text
    assert "http-check send meth GET uri /readyz" in text
    assert "option redispatch 1" in text and "retry-on conn-failure empty-response 503" in text
    ids = re.findall(r"server proxy-(\d) \"\$\{DICOMWEB_PROXY_\1\}\" id (\d)", text)
    assert [(int(a) + 1) for a, _ in ids] == [int(b) for _, b in ids] == [1, 2, 3]


def test_reference_nginx_config_parses(tmp_path: Path) -> None:
    text = (BALANCERS / "nginx.conf").read_text()
    assert "hash $dicomweb_study consistent;" in text
    for i in range(3):
        text = text.replace(
            f"dicomweb-proxy-{i}.dicomweb-proxy-headless:8080", ADDRESSES[f"DICOMWEB_PROXY_{i}"]
        )
    text = text.replace("listen 8080;", "listen 127.0.0.1:9199;")
    (tmp_path / "dicomweb-proxy.conf").write_text(text)
    main = (
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/dicomweb-proxy.conf; }}\n"
    )
    (tmp_path / "nginx.conf").write_text(main)
    done = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_envoy_gateway_pieces_name_each_other() -> None:
    documents = list(yaml.safe_load_all((BALANCERS / "envoy-gateway.yaml").read_text()))
    kinds = {document["kind"]: document for document in documents if document}
    assert set(kinds) == {"HTTPRoute", "EnvoyExtensionPolicy", "BackendTrafficPolicy"}
    route = kinds["HTTPRoute"]["metadata"]["name"]
    for policy in ("EnvoyExtensionPolicy", "BackendTrafficPolicy"):
        assert [ref["name"] for ref in kinds[policy]["spec"]["targetRefs"]] == [route]
    balancer = kinds["BackendTrafficPolicy"]["spec"]
    (header,) = balancer["loadBalancer"]["consistentHash"]["headers"]
    lua = kinds["EnvoyExtensionPolicy"]["spec"]["lua"][0]["inline"]
    assert f'headers:add("{header["name"]}", uid)' in lua
    assert f'headers:remove("{header["name"]}")' in lua
    assert balancer["healthCheck"]["active"]["http"]["path"] == "/readyz"


# -- the fleet on loopback -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> dict[str, Any]:
    return run.run(run.QUICK, log=lambda line: None)


def test_three_replicas_fetch_each_study_once(fleet: dict[str, Any]) -> None:
    a = fleet["hash"]["a"]
    assert a["errors"] == 0
    assert a["copies"] == 1.0
    assert len(a["studies_fetched"]) == a["studies_opened"]
    assert a["routing"]["mismatched"] == 0 and a["routing"]["checked"] == a["requests"]


def test_one_replica_stopped_costs_its_share_and_no_client_error(fleet: dict[str, Any]) -> None:
    b = fleet["hash"]["b"]
    assert b["errors"] == 0, b["error_paths"]
    assert len(b["studies_fetched"]) <= run.LIMIT * b["studies_opened"]
    assert b["routing"]["mismatched"] == 0


def test_the_replica_back_gets_its_share_back(fleet: dict[str, Any]) -> None:
    c = fleet["hash"]["c"]
    assert c["errors"] == 0 and not c["studies_fetched"] and c["hit_ratio"] == 1.0
    assert fleet["verdicts"]["c: its share back on it"]


def test_fleet_and_simulation_agree_where_they_overlap(fleet: dict[str, Any]) -> None:
    for name in ("a", "b", "c"):
        assert set(fleet["hash"][name]["studies_fetched"]) == set(fleet["prediction"][name])
    measured = fleet["roundrobin"]["a"]["copies"]
    assert abs(measured - fleet["prediction_roundrobin_copies"]) < 0.25


def test_round_robin_fetches_studies_more_than_once(fleet: dict[str, Any]) -> None:
    assert fleet["roundrobin"]["a"]["copies"] > 1.5
    assert fleet["roundrobin"]["a"]["hit_ratio"] < fleet["hash"]["a"]["hit_ratio"]
    assert all(fleet["verdicts"].values()), fleet["verdicts"]
