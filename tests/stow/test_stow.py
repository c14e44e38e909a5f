"""STOW-RS through the proxy: batching, retries, splitting, merged responses, dead letter.

The fake upstream (tests/fake_upstream.py) relays between the proxy and a real Orthanc
and records what the upstream received; that is how batching and retries are proven.
"""

from __future__ import annotations

import errno
import io
import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from harness.dicomgen import make_study
from harness.orthanc import Orthanc
from proxy.cli import main as cli_main
from proxy.state import STUDIES_CHANGED
from proxy.stow import spool as spool_module
from tests.fake_upstream import Answer, FakeUpstream, Received, stow_success
from tests.support import ProxyThread, eventually

TOKEN = "admin-secret"
BOUNDARY = "client-boundary-0123456789"
DICOM_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAST = {"stow_retry_delay": 0.001, "admin_token": TOKEN}
STOW = "/dicom-web/studies{study:.*}"  # POSTed to: STOW-RS, with or without a study
BUSY = Answer(503, "busy", {"Retry-After": "0"})


def stow_requests(relay: FakeUpstream) -> list[Received]:
    return [r for r in relay.received if r.headers.get("Content-Type", "").startswith("multi")]


def multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str = BOUNDARY) -> bytes:
    body = b""
    for headers, data in parts:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        body += f"--{boundary}\r\n{lines}\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def dicom_parts(datas: list[bytes]) -> bytes:
    return multipart([({"Content-Type": "application/dicom"}, data) for data in datas])


def post(url: str, body: bytes, content_type: str, accept: str = "") -> requests.Response:
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return requests.post(url + "/studies", data=body, headers=headers, timeout=60)


def stored(orthanc: Orthanc, study_uid: str) -> set[str]:
    try:
        found = orthanc.get_json(f"/dicom-web/studies/{study_uid}/instances")
    except Exception:
        return set()
    return {item["00080018"]["Value"][0] for item in found}  # type: ignore[union-attr]


def items(document: dict, tag: str) -> list[dict]:
    return document.get(tag, {}).get("Value", [])


def referenced(document: dict) -> set[str]:
    return {item["00081155"]["Value"][0] for item in items(document, "00081199")}


def admin(proxy: ProxyThread, method: str, path: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return requests.request(method, proxy.url + path, headers=headers, timeout=60)


def spool_files(proxy: ProxyThread) -> list[Path]:
    root = proxy.settings.spool_path
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


# -- batching ---------------------------------------------------------------------------


def test_120_instances_go_in_5_batches(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:

    async def warned(received: Received) -> Answer:  # an archive that stores with a warning
        answer = await relay.forward(received)
        return replace(answer, headers={**answer.headers, "Warning": '299 relay "relayed"'})

    relay.route("POST", STOW, warned)
    proxy = start_proxy(relay.dicomweb, stow_max_instances=25, **FAST)
    changed: list[set[str]] = []

    async def record(studies: set[str]) -> None:
        changed.append(studies)

    proxy.app[STUDIES_CHANGED].append(record)  # type: ignore[index]
    study = make_study(2, 60, rows=16, columns=16)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 200, response.text
    assert sorted(len(r.parts()) for r in stow_requests(relay)) == [20, 25, 25, 25, 25]
    assert all(r.path == "/dicom-web/studies" for r in stow_requests(relay))
    assert all("Content-Length" in r.headers for r in stow_requests(relay))
    boundaries = {r.headers["Content-Type"].rsplit("boundary=", 1)[1] for r in stow_requests(relay)}
    assert len(boundaries) == 5
    assert 1 <= relay.max_in_flight <= 2  # --stow-concurrency
    assert stored(orthanc, study.uid) == {uid for _, uid, _ in study.instances}
    document = response.json()
    assert referenced(document) == {uid for _, uid, _ in study.instances}
    assert document["00081190"]["Value"] == [f"{proxy.dicomweb}/studies/{study.uid}"]
    first_url = items(document, "00081199")[0]["00081190"]["Value"][0]
    assert first_url.startswith(proxy.dicomweb + "/studies/" + study.uid)
    assert "relayed" in response.headers["Warning"]
    assert changed == [{study.uid}]
    assert spool_files(proxy) == []


def test_batches_split_by_bytes(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    study = make_study(1, 10, rows=32, columns=32)
    size = len(study.instances[0][2])
    limit = 3 * size + 1000
    proxy = start_proxy(relay.dicomweb, stow_max_bytes=limit, **FAST)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 200, response.text
    assert sorted(len(r.parts()) for r in stow_requests(relay)) == [1, 3, 3, 3]
    assert all(len(r.body) <= limit for r in stow_requests(relay))
    assert all(int(r.headers["Content-Length"]) == len(r.body) for r in stow_requests(relay))
    assert len(stored(orthanc, study.uid)) == 10


def test_an_instance_larger_than_the_byte_limit_goes_alone(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    study = make_study(1, 3, rows=64, columns=64)
    proxy = start_proxy(relay.dicomweb, stow_max_bytes=1000, **FAST)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 200
    assert [len(r.parts()) for r in stow_requests(relay)] == [1, 1, 1]


@pytest.mark.parametrize("with_study", [False, True])
def test_dicomweb_client_store_instances(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread], with_study: bool
) -> None:
    proxy = start_proxy(relay.dicomweb, stow_max_instances=2, **FAST)
    study = make_study(1, 5, rows=16, columns=16)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, _, data in study.instances]
    client = DICOMwebClient(url=proxy.dicomweb)
    result = client.store_instances(datasets, study.uid if with_study else None)
    got = {item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence}
    assert got == {uid for _, uid, _ in study.instances}
    expected_path = f"/dicom-web/studies/{study.uid}" if with_study else "/dicom-web/studies"
    assert [r.path for r in stow_requests(relay)] == [expected_path] * 3
    assert len(stored(orthanc, study.uid)) == 5


def test_dicomweb_client_store_instances_on_a_stock_orthanc(
    orthanc: Orthanc, proxy: ProxyThread
) -> None:
    """requests asks for gzip, the proxy asks Orthanc for gzip: every instance referenced."""
    study = make_study(1, 3, rows=16, columns=16)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, _, data in study.instances]
    result = DICOMwebClient(url=proxy.dicomweb).store_instances(datasets)
    got = {item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence}
    assert got == {uid for _, uid, _ in study.instances}
    assert "FailedSOPSequence" not in result
    assert stored(orthanc, study.uid) == got


def test_a_200_with_an_unreadable_body_is_stored_not_failed(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    """SPEC section 5: what the archive accepted is reported stored and never kept in the
    dead letter (replaying it would store it twice)."""

    async def unreadable(received: Received) -> Answer:
        answer = await relay.forward(received)
        if answer.status != 200:
            return answer
        # A gateway that replaces the archive's answer (seen: an HTML page).
        return Answer(body="<html>stored</html>", headers={"Content-Type": "text/html"})

    relay.route("POST", STOW, unreadable)
    proxy = start_proxy(relay.dicomweb, stow_max_instances=2, **FAST)
    study = make_study(1, 3, rows=16, columns=16)
    body = dicom_parts([d for _, _, d in study.instances])
    response = post(proxy.dicomweb, body, DICOM_TYPE)
    assert response.status_code == 200, response.text
    assert referenced(response.json()) == {uid for _, uid, _ in study.instances}
    assert "00081198" not in response.json()
    assert [r.status for r in stow_requests(relay)] == [200, 200]
    assert admin(proxy, "GET", "/admin/dead-letter").json()["entries"] == []
    assert stored(orthanc, study.uid) == {uid for _, uid, _ in study.instances}


def test_single_part_application_dicom(orthanc: Orthanc, proxy: ProxyThread) -> None:
    study = make_study(1, 1, rows=16, columns=16)
    _, uid, data = study.instances[0]
    response = post(proxy.dicomweb, data, "application/dicom")
    assert response.status_code == 200, response.text
    assert referenced(response.json()) == {uid}
    assert stored(orthanc, study.uid) == {uid}


def test_a_non_dicom_part_is_one_failed_item(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(relay.dicomweb, **FAST)
    study = make_study(1, 2, rows=16, columns=16)
    datas = [d for _, _, d in study.instances]
    response = post(
        proxy.dicomweb, dicom_parts([datas[0], b"not dicom at all", datas[1]]), DICOM_TYPE
    )
    assert response.status_code == 202
    failed = items(response.json(), "00081198")
    assert len(failed) == 1
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert [len(r.parts()) for r in stow_requests(relay)] == [2]
    assert len(stored(orthanc, study.uid)) == 2


def test_xml_response_when_asked(proxy: ProxyThread) -> None:
    study = make_study(1, 2, rows=16, columns=16)
    body = dicom_parts([d for _, _, d in study.instances])
    response = post(proxy.dicomweb, body, DICOM_TYPE, accept="application/dicom+xml")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom+xml")
    root = ET.fromstring(response.content)
    uids = {value.text for value in root.iter() if value.tag.endswith("Value")}
    assert {uid for _, uid, _ in study.instances} <= uids


# -- retries, splitting, dead letter ----------------------------------------------------


def test_transient_503s_are_retried(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    relay.route("POST", STOW, first=[BUSY, BUSY])
    proxy = start_proxy(relay.dicomweb, stow_max_instances=2, stow_retries=3, **FAST)
    study = make_study(1, 4, rows=16, columns=16)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 200, response.text
    statuses = sorted(r.status for r in stow_requests(relay))
    assert statuses == [200, 200, 503, 503]
    assert len(stored(orthanc, study.uid)) == 4
    assert admin(proxy, "GET", "/admin/dead-letter").json()["entries"] == []


def test_permanent_503_dead_letters_then_replays(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    down = relay.route("POST", STOW, BUSY)
    proxy = start_proxy(relay.dicomweb, stow_max_instances=2, stow_retries=2, **FAST)
    study = make_study(1, 3, rows=16, columns=16)
    uids = {uid for _, uid, _ in study.instances}
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 409
    failed = items(response.json(), "00081198")
    assert {item["00081155"]["Value"][0] for item in failed} == uids
    assert {item["00081197"]["Value"][0] for item in failed} == {0xA700}
    assert len(stow_requests(relay)) == 4  # 2 batches x 2 attempts
    entries = admin(proxy, "GET", "/admin/dead-letter").json()["entries"]
    assert {e["sop_instance"] for e in entries} == uids
    assert {(e["status"], e["attempts"], e["study"]) for e in entries} == {(503, 2, study.uid)}
    assert stored(orthanc, study.uid) == set()
    assert spool_files(proxy) == []

    relay.routes.remove(down)  # the fault clears
    first = entries[0]["id"]
    replayed = admin(proxy, "POST", f"/admin/dead-letter/{first}/replay")
    assert replayed.status_code == 200 and replayed.json()["stored"] is True
    # The rest through the CLI, with the same options as serve.
    args = ["dead-letter", "replay", "--all", "--upstream-url", relay.dicomweb]
    assert cli_main([*args, "--data-dir", proxy.settings.data_dir]) == 0
    assert stored(orthanc, study.uid) == uids
    assert admin(proxy, "GET", "/admin/dead-letter").json()["entries"] == []
    # Replaying an instance Orthanc already holds is harmless.
    assert post(proxy.dicomweb, study.instances[0][2], "application/dicom").status_code == 200


def test_dead_letter_show_and_drop(
    relay: FakeUpstream, start_proxy: Callable[..., ProxyThread], capsys: pytest.CaptureFixture[str]
) -> None:
    relay.route("POST", STOW, BUSY)
    proxy = start_proxy(relay.dicomweb, stow_retries=1, **FAST)
    study = make_study(1, 2, rows=16, columns=16)
    post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    entries = admin(proxy, "GET", "/admin/dead-letter").json()["entries"]
    assert len(entries) == 2
    data_dir = ["--data-dir", proxy.settings.data_dir]
    assert cli_main(["dead-letter", "list", *data_dir]) == 0
    assert entries[0]["id"] in capsys.readouterr().out
    assert cli_main(["dead-letter", "show", entries[0]["id"], *data_dir]) == 0
    assert json.loads(capsys.readouterr().out)["sop_instance"] == entries[0]["sop_instance"]
    assert cli_main(["dead-letter", "drop", entries[0]["id"], *data_dir]) == 0
    assert admin(proxy, "DELETE", f"/admin/dead-letter/{entries[1]['id']}").status_code == 204
    assert admin(proxy, "GET", "/admin/dead-letter").json()["entries"] == []
    assert admin(proxy, "DELETE", f"/admin/dead-letter/{entries[1]['id']}").status_code == 404
    unauthenticated = requests.get(proxy.url + "/admin/dead-letter", timeout=10)
    assert unauthenticated.status_code == 401


def test_content_rejections_are_not_kept(
    relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(relay.dicomweb, **FAST)
    response = post(proxy.dicomweb, dicom_parts([b"garbage"]), DICOM_TYPE)
    assert response.status_code == 409
    assert stow_requests(relay) == []
    assert admin(proxy, "GET", "/admin/dead-letter").json()["entries"] == []


def test_413_halves_batches(
    orthanc: Orthanc, relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    too_many = Answer(413, "too many parts")
    relay.route("POST", STOW, lambda r: too_many if len(r.parts()) > 3 else relay.forward(r))
    proxy = start_proxy(relay.dicomweb, stow_max_instances=10, **FAST)
    study = make_study(1, 10, rows=16, columns=16)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 200, response.text
    sizes = [(len(r.parts()), r.status) for r in stow_requests(relay)]
    assert sizes == [(10, 413), (5, 413), (2, 200), (3, 200), (5, 413), (2, 200), (3, 200)]
    assert len(stored(orthanc, study.uid)) == 10


# -- dicom+json with bulk data ------------------------------------------------------------


def test_json_metadata_and_bulk_data_stay_together(
    relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    relay.route("POST", STOW, stow_success)  # dicom+json, which Orthanc does not take
    proxy = start_proxy(relay.dicomweb, stow_max_instances=2, **FAST)
    study_uid = "1.2.3.4"
    metadata, bulk = [], []
    for number in range(5):
        uid = f"1.2.3.4.5.{number}"
        metadata.append(
            {
                "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                "00080018": {"vr": "UI", "Value": [uid]},
                "0020000D": {"vr": "UI", "Value": [study_uid]},
                "0020000E": {"vr": "UI", "Value": ["1.2.3.4.6"]},
                "7FE00010": {"vr": "OW", "BulkDataURI": f"bulk/{number}"},
            }
        )
        bulk.append(
            (
                {"Content-Type": "application/octet-stream", "Content-Location": f"bulk/{number}"},
                bytes([number]) * (100 + number),
            )
        )
    boundary = "json-boundary-42"
    head = ({"Content-Type": "application/dicom+json"}, json.dumps(metadata).encode())
    body = multipart([head, *reversed(bulk)], boundary)
    content_type = f'multipart/related; type="application/dicom+json"; boundary="{boundary}"'
    response = post(proxy.dicomweb, body, content_type)
    assert response.status_code == 200, response.text
    assert len(referenced(response.json())) == 5
    assert response.json()["00081190"]["Value"] == [f"{proxy.dicomweb}/studies/{study_uid}"]
    for request in stow_requests(relay):
        first, *rest = request.parts()
        assert first.headers["content-type"] == "application/dicom+json"
        sent = [item["00080018"]["Value"][0][-1] for item in json.loads(first.body)]
        assert sorted(p.headers["content-location"][-1] for p in rest) == sorted(sent)
        for part in rest:
            assert part.body == bytes([int(part.headers["content-location"][-1])]) * len(part.body)
    assert sorted(len(r.parts()) for r in stow_requests(relay)) == [2, 3, 3]


# -- refusals -----------------------------------------------------------------------------

REFUSALS = [
    ("text/plain", b"hello", 415),
    ('multipart/related; type="image/jpeg"; boundary=x', b"--x\r\n\r\na\r\n--x--", 415),
    ('multipart/related; type="application/dicom"', b"--x\r\n\r\na\r\n--x--", 400),
    (DICOM_TYPE, b"--other\r\n\r\nabc\r\n--other--\r\n", 400),
    (DICOM_TYPE, f"--{BOUNDARY}\r\n\r\nno closing boundary".encode(), 400),
    (DICOM_TYPE, f"--{BOUNDARY}--\r\n".encode(), 400),
]


@pytest.mark.parametrize(("content_type", "body", "status"), REFUSALS)
def test_malformed_and_unsupported_bodies_send_nothing(
    relay: FakeUpstream,
    start_proxy: Callable[..., ProxyThread],
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    proxy = start_proxy(relay.dicomweb, **FAST)
    study = make_study(1, 1, rows=16, columns=16)
    # A valid instance first: even so, a malformed body forwards nothing.
    if content_type == DICOM_TYPE and body.startswith(f"--{BOUNDARY}\r\n".encode()):
        body = dicom_parts([study.instances[0][2]])[: -len(f"--{BOUNDARY}--\r\n")] + body
    response = post(proxy.dicomweb, body, content_type)
    assert response.status_code == status
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    assert relay.received == []
    assert spool_files(proxy) == []


def test_max_body_exceeded_is_413(
    relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(relay.dicomweb, max_body=2000, **FAST)
    study = make_study(1, 3, rows=16, columns=16)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 413
    assert relay.received == []
    assert spool_files(proxy) == []


def test_client_abort_leaves_no_spool_files(
    relay: FakeUpstream, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy(relay.dicomweb, **FAST)
    study = make_study(1, 4, rows=64, columns=64)
    body = dicom_parts([d for _, _, d in study.instances])
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {DICOM_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.settings.listen_port)) as sock:
        sock.sendall(head + body[: len(body) // 2])
        eventually(lambda: spool_files(proxy), message="the upload was not spooled")
    eventually(
        lambda: (
            not proxy.settings.spool_path.exists() or not any(proxy.settings.spool_path.iterdir())
        ),
        message="the aborted upload's spool files were not removed",
    )
    assert spool_files(proxy) == []
    assert relay.received == []


def test_full_spool_disk_is_507_and_stores_nothing(
    relay: FakeUpstream, start_proxy: Callable[..., ProxyThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []

    class FillsUp(io.FileIO):
        """The disk is full from the third part's write on."""

        def write(self, data: Any) -> int:
            writes.append(len(data))
            if len(writes) >= 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def open_until_full(path: Any, mode: str = "r", **kwargs: Any) -> Any:
        return FillsUp(path, mode) if mode == "wb" else open(path, mode, **kwargs)

    monkeypatch.setattr(spool_module, "open", open_until_full, raising=False)
    proxy = start_proxy(relay.dicomweb, **FAST)
    study = make_study(1, 4, rows=16, columns=16)
    response = post(proxy.dicomweb, dicom_parts([d for _, _, d in study.instances]), DICOM_TYPE)
    assert response.status_code == 507
    assert response.json()["title"] == "Insufficient storage"
    assert len(writes) >= 3
    assert relay.received == []
    assert spool_files(proxy) == []
