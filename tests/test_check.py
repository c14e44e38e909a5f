"""``dicomweb-proxy check``: exit 0 when everything works, else 1 naming what failed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from harness.net import free_port
from harness.orthanc import Orthanc
from tests.fake_upstream import Answer, FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


async def run_check(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "check",
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode()


async def test_check_passes_against_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    status, out = await run_check("--upstream-url", orthanc.dicomweb, "--data-dir", str(tmp_path))
    assert status == 0, out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "config",
        "storage",
        "upstream auth",
        "upstream",
        "qido",
    ]
    assert all(": ok (" in line for line in lines)


async def test_check_fails_when_the_upstream_is_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    status, out = await run_check("--upstream-url", url, "--data-dir", str(tmp_path))
    assert status == 1
    assert "upstream: FAILED (Upstream unreachable: cannot connect" in out
    assert out.rstrip().endswith("failed: upstream")


async def test_check_fails_on_a_qido_answer_that_is_not_json(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    login = Answer(200, "<html>login</html>", {"Content-Type": "text/html"})
    fake.route("GET", "/dicom-web/studies", login)
    status, out = await run_check("--upstream-url", fake.dicomweb, "--data-dir", str(tmp_path))
    assert status == 1
    assert "upstream: ok (HTTP 200" in out
    assert "qido: FAILED (the answer is not JSON)" in out


async def test_check_names_rejected_credentials(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.route("GET", "/dicom-web/studies", Answer(401, "{}", {"Content-Type": "application/json"}))
    status, out = await run_check("--upstream-url", fake.dicomweb, "--data-dir", str(tmp_path))
    assert status == 1
    assert (
        "upstream: FAILED (the upstream requires authentication: HTTP 401 (see --upstream-auth))"
        in out
    )


async def test_check_fails_on_unwritable_storage(orthanc: Orthanc, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    status, out = await run_check("--upstream-url", orthanc.dicomweb, "--data-dir", str(blocker))
    assert status == 1
    assert "storage: FAILED (not writable: " in out
    assert out.rstrip().endswith("failed: storage")


async def test_check_exits_2_on_an_invalid_option() -> None:
    status, out = await run_check("--upstream-url", "not a url")
    assert status == 2
    assert out.startswith("dicomweb-proxy: --upstream-url: invalid URL")
