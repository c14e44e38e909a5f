"""Options from flags, environment and TOML with their precedence; clear errors, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy import cli, settings
from proxy.settings import SettingsError, parse_duration, parse_size


def load(argv: list[str], environ: dict[str, str] | None = None) -> settings.Settings:
    flags = cli.build_parser().parse_args(["serve", *argv])
    return settings.load(flags, environ or {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GiB", 10 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1TiB", 1024**4),
        ("20KB", 20_000),
        ("3MB", 3_000_000),
        ("2GB", 2_000_000_000),
        ("1024", 1024),
        ("1.5KiB", 1536),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("24h", 86400), ("7d", 604800), ("0s", 0)],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        'upstream_url = "http://file:8042/dicom-web"\ncache_size = "1GiB"\n'
        'metadata_ttl = "2m"\nqido_ttl = "5s"\n'
    )
    environ = {
        "DICOMWEB_PROXY_CACHE_SIZE": "2GiB",
        "DICOMWEB_PROXY_METADATA_TTL": "3m",
    }
    loaded = load(["--config", str(config), "--cache-size", "3GiB"], environ)
    assert loaded.upstream_url == "http://file:8042/dicom-web"
    assert loaded.cache_size == 3 * 1024**3  # flag
    assert loaded.metadata_ttl == 180  # environment
    assert loaded.qido_ttl == 5  # file
    assert loaded.stale_if_error == 3600  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('upstream-url = "http://pacs/dicom-web"\nno_cache = true\n')
    loaded = load([], {"DICOMWEB_PROXY_CONFIG": str(config)})
    assert loaded.upstream_url == "http://pacs/dicom-web"
    assert loaded.no_cache is True


def test_boolean_flags_and_lists() -> None:
    loaded = load(
        ["--upstream-url", "https://pacs/dicom-web/", "--no-cache", "--cors-origins", "a, b"]
    )
    assert loaded.no_cache is True
    assert loaded.cors_origins == ("a", "b")
    assert loaded.upstream_url == "https://pacs/dicom-web"


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["--cache-size", "lots"], {}, "--cache-size"),
        (["--metadata-ttl", "soon"], {}, "--metadata-ttl"),
        (["--listen", "nowhere"], {}, "--listen"),
        (["--upstream-auth", "kerberos"], {}, "--upstream-auth"),
        (["--workers", "0"], {}, "--workers"),
        ([], {"DICOMWEB_PROXY_STOW_RETRIES": "-1"}, "--stow-retries"),
        ([], {"DICOMWEB_PROXY_NO_CACHE": "maybe"}, "--no-cache"),
    ],
)
def test_invalid_values_name_the_option(
    argv: list[str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load(["--upstream-url", "http://pacs/dicom-web", *argv], environ)


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('upstream_url = "http://pacs/dicom-web"\ncache_sise = "1GiB"\n')
    with pytest.raises(SettingsError, match="cache_sise"):
        load(["--config", str(config)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--upstream-url", "http://pacs/dicom-web", "--cache-size", "huge"], "--cache-size"),
        ([], "--upstream-url"),
        (["--upstream-url", "ftp://pacs"], "--upstream-url"),
    ],
)
def test_command_line_exits_2_with_one_line(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_masked_configuration_hides_secrets() -> None:
    loaded = load(["--upstream-url", "http://pacs/dicom-web", "--admin-token", "t0ps3cret"])
    assert "t0ps3cret" not in str(loaded.masked())


def test_configuration_reference_documents_every_option() -> None:
    """The reference is generated (tests/test_docs.py checks it is current); README links it."""
    root = Path(__file__).resolve().parent.parent
    reference = (root / "docs" / "reference" / "configuration.md").read_text()
    missing = [
        settings.option_flag(name)
        for name in settings.OPTION_FIELDS
        if f"`{settings.option_flag(name)}" not in reference
    ]
    assert missing == []
