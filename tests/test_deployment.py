"""Deployment artefacts (SPEC section 7): the wheel, the Dockerfile, the Helm chart.

This machine has no container engine and no ``helm`` binary, so the image is checked by
parsing the Dockerfile (plus running its HEALTHCHECK command against a live proxy), and
the chart by its schema, its values and templates with the template actions stubbed out.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from harness.net import free_port
from proxy import settings
from proxy.settings import OPTION_FIELDS, option_env
from tests.support import ProxyThread

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "helm" / "dicomweb-proxy"
TEMPLATES = CHART / "templates"
DASHBOARD = CHART / "dashboards" / "dicomweb-proxy.json"
# What the Dockerfile's build stage copies; the wheel test builds from exactly these.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "proxy")

# Options the chart sets that the auth work (another branch) adds to proxy/settings.py.
# Once it is merged, names found in OPTION_FIELDS no longer need this list: delete it.

# SPEC section 6: every metric and the labels it carries.
SPEC_METRICS = {
    "dicomweb_proxy_requests_total": {"transaction", "method", "status"},
    "dicomweb_proxy_request_duration_seconds": {"transaction"},
    "dicomweb_proxy_cache_requests_total": {"result"},
    "dicomweb_proxy_cache_bytes": set(),
    "dicomweb_proxy_cache_entries": set(),
    "dicomweb_proxy_cache_served_bytes_total": {"source"},
    "dicomweb_proxy_upstream_requests_total": {"status"},
    "dicomweb_proxy_upstream_duration_seconds": set(),
    "dicomweb_proxy_stow_batches_total": {"outcome"},
    "dicomweb_proxy_stow_instances_total": {"outcome"},
    "dicomweb_proxy_dead_letter_entries": set(),
}
HISTOGRAMS = {"dicomweb_proxy_request_duration_seconds", "dicomweb_proxy_upstream_duration_seconds"}
# Labels Prometheus adds at scrape time, usable in any query.
TARGET_LABELS = {"namespace", "job", "pod", "instance"}


# -- the wheel ----------------------------------------------------------------------------


def test_wheel_builds_installs_into_a_fresh_virtualenv_and_runs(tmp_path: Path) -> None:
    """``pip wheel . --no-deps``, install into a new venv, run the console script.

    The wheel is built from a copy of the files the Dockerfile's build stage copies, so a
    file the build needs but the image does not get fails here too.

    Nothing is downloaded: the build uses this environment's setuptools (no build
    isolation) and the fresh venv borrows the already installed dependencies through a
    ``.pth`` line; the ``proxy`` package itself must come from the wheel.
    """
    source = tmp_path / "src"  # exactly what the Dockerfile's build stage copies
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    _run(
        sys.executable, "-m", "pip", "wheel", str(source), *offline, "-w", str(wheels), cwd=tmp_path
    )
    (wheel,) = wheels.glob("dicomweb_proxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "proxy/cli.py" in names and "proxy/dicomweb/uri.py" in names
    assert not any(name.startswith("tests/") for name in names)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    ).strip()
    (Path(site) / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = _run(str(python), "-c", "import proxy; print(proxy.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv)
    usage = _run(str(venv / "bin" / "dicomweb-proxy"), "--help", cwd=tmp_path)
    assert "serve" in usage and "check" in usage
    serve_usage = _run(str(venv / "bin" / "dicomweb-proxy"), "serve", "--help", cwd=tmp_path)
    assert "--upstream-url" in serve_usage and "--cache-size" in serve_usage
    requires = _run(
        str(python),
        "-c",
        "import importlib.metadata as m; print('\\n'.join(m.requires('dicomweb-proxy')))",
        cwd=tmp_path,
    )
    assert {"aiohttp", "diskcache", "pydicom", "prometheus-client"} <= {
        re.split(r"[<>=;\[ ]", line, maxsplit=1)[0] for line in requires.splitlines()
    }


def _run(*argv: str, cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# -- the Dockerfile -----------------------------------------------------------------------


def parse_dockerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not logical:
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            instruction, _, arguments = logical.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((instruction.upper(), " ".join(arguments.split())))
        logical = ""
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [arguments for name, arguments in stage if name == instruction]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for arguments in _args(stage, "ENV"):
        for item in shlex.split(arguments):
            key, _, value = item.partition("=")
            values[key] = value
    return values


def test_dockerfile_builds_a_wheel_then_installs_it_into_a_slim_runtime(stages: Any) -> None:
    assert len(stages) == 2
    build, runtime = stages
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim AS build", _args(build, "FROM")[0])
    assert any("pip wheel" in run for run in _args(build, "RUN"))
    copied = {source for line in _args(build, "COPY") for source in line.split()[:-1]}
    assert copied == set(WHEEL_SOURCES), "the wheel test builds from the same files"
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim AS runtime", _args(runtime, "FROM")[0])
    assert any("pip install --no-index" in run for run in _args(runtime, "RUN"))
    version = re.search(r"ARG PYTHON_VERSION=(\S+)", DOCKERFILE.read_text())
    assert version and version.group(1) in {"3.11", "3.12"}


def test_dockerfile_runtime_is_non_root_with_a_volume_port_and_healthcheck(stages: Any) -> None:
    runtime = stages[-1]
    (user,) = _args(runtime, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root UID, so runAsNonRoot can check it"
    assert json.loads(_args(runtime, "VOLUME")[0]) == ["/var/cache/dicomweb-proxy"]
    assert _args(runtime, "EXPOSE") == ["8080"]
    (healthcheck,) = _args(runtime, "HEALTHCHECK")
    assert "/healthz" in healthcheck and " CMD [" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    env = _env(runtime)
    assert env["DICOMWEB_PROXY_LISTEN"] == "0.0.0.0:8080"
    assert env["DICOMWEB_PROXY_DATA_DIR"] == "/var/cache/dicomweb-proxy"
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["podSecurityContext"]["runAsUser"] == int(uid)


def test_dockerfile_entrypoint_is_exec_form_so_sigterm_reaches_the_proxy(stages: Any) -> None:
    runtime = stages[-1]
    (entrypoint,) = _args(runtime, "ENTRYPOINT")
    (cmd,) = _args(runtime, "CMD")
    assert json.loads(entrypoint) == ["dicomweb-proxy"]
    assert json.loads(cmd) == ["serve"]


def test_dockerfile_environment_is_accepted_by_the_program(stages: Any) -> None:
    environ = {**_env(stages[-1]), option_env("upstream_url"): "http://pacs:8042/dicom-web"}
    config = settings.load(argparse.Namespace(), environ)
    assert config.listen_host == "0.0.0.0" and config.listen_port == 8080
    assert config.data_dir == "/var/cache/dicomweb-proxy"
    assert config.workers >= 1  # "auto": one per CPU this process may use


def _healthcheck_argv(stages: Any) -> list[str]:
    (healthcheck,) = _args(stages[-1], "HEALTHCHECK")
    argv: list[str] = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_healthcheck_command_passes_against_a_running_proxy(
    stages: Any, start_proxy: Callable[..., ProxyThread]
) -> None:
    proxy = start_proxy("http://127.0.0.1:9/dicom-web")  # /healthz never asks the upstream
    environ = {"DICOMWEB_PROXY_LISTEN": f"0.0.0.0:{proxy.settings.listen_port}", "PATH": ""}
    done = subprocess.run(_healthcheck_argv(stages), env=environ, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_healthcheck_command_fails_when_nothing_listens(stages: Any) -> None:
    environ = {"DICOMWEB_PROXY_LISTEN": f"0.0.0.0:{free_port()}", "PATH": ""}
    done = subprocess.run(_healthcheck_argv(stages), env=environ, capture_output=True, timeout=30)
    assert done.returncode != 0


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "helm"} <= ignored
    assert not {"proxy", "pyproject.toml", "README.md"} & ignored


# -- chart values and schema ----------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(loaded)
    return loaded


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = _yaml(CHART / "values.yaml")
    return loaded


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of a user values file over values.yaml: maps deep, the rest replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))


def test_examples_cover_sidecar_oauth2_and_scale_out() -> None:
    assert {path.stem for path in EXAMPLES} >= {"sidecar", "oauth2", "scale-out"}


def test_values_yaml_validates(schema: dict[str, Any], values: dict[str, Any]) -> None:
    jsonschema.validate(values, schema, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_example_values_validate(
    example: Path, schema: dict[str, Any], values: dict[str, Any]
) -> None:
    jsonschema.validate(_merged(values, _yaml(example)), schema, cls=jsonschema.Draft7Validator)


BAD_VALUES = [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"unknownKey": True}, "additional"),
    ({"upstream": {"auth": "kerberos"}}, "kerberos"),
    ({"upstream": {"url": "pacs:8042"}}, "pacs:8042"),
    ({"upstream": {"timeout": 30}}, "30"),
    ({"upstream": {"passwd": "x"}}, "additional"),
    ({"inbound": {"tokens": "one-token"}}, "one-token"),
    ({"proxy": {"port": 70000}}, "70000"),
    ({"proxy": {"metadataTtl": "a minute"}}, "a minute"),
    ({"proxy": {"extraEnv": {"PATH": "/bin"}}}, "PATH"),
    ({"proxy": {"stow": {"maxInstances": 0}}}, "0"),
    ({"cache": {"size": "10GB"}}, "10GB"),
    ({"cache": {"sizePercent": 120}}, "120"),
    ({"cache": {"persistence": {"enabled": "yes"}}}, "yes"),
    ({"image": {"pullPolicy": "Sometimes"}}, "Sometimes"),
    # The ingress-nginx study routing is gone (scaleOut replaces it): the key is refused.
    ({"ingress": {"routing": "study"}}, "routing"),
    ({"scaleOut": {"enabled": "yes"}}, "yes"),
    ({"scaleOut": {"balancer": {"weight": 0}}}, "0"),
    ({"scaleOut": {"balancer": {"weight": 1000}}}, "1000"),
    ({"scaleOut": {"balancer": {"port": 8404}}}, "8404"),
    ({"scaleOut": {"balancer": {"healthCheck": {"interval": "1.5s"}}}}, "1.5s"),
    ({"scaleOut": {"balancer": {"image": {"tag": ""}}}}, "tag"),
    ({"podDisruptionBudget": {"maxUnavailable": "one"}}, "one"),
    ({"probes": {"readiness": {"path": "/metrics"}}}, "/metrics"),
    ({"autoscaling": {"maxReplicas": "6"}}, "6"),
]


@pytest.mark.parametrize(("override", "mentioned"), BAD_VALUES, ids=lambda case: str(case))
def test_wrong_values_are_rejected(
    override: dict[str, Any], mentioned: str, schema: dict[str, Any], values: dict[str, Any]
) -> None:
    with pytest.raises(jsonschema.ValidationError) as raised:
        jsonschema.validate(_merged(values, override), schema, cls=jsonschema.Draft7Validator)
    assert mentioned in str(raised.value)


def test_every_value_is_typed_by_the_schema(schema: dict[str, Any], values: dict[str, Any]) -> None:
    untyped = list(_untyped(values, schema, "values"))
    assert not untyped, f"values without a type in values.schema.json: {untyped}"


def _untyped(value: Any, node: dict[str, Any], path: str) -> Iterator[str]:
    if not any(key in node for key in ("type", "enum", "const", "anyOf", "oneOf")):
        yield path
    if not isinstance(value, dict) or "properties" not in node:
        return  # a leaf, or a free-form map such as resources or affinity
    for key, item in value.items():
        if key not in node["properties"]:
            yield f"{path}.{key} (missing)"
        else:
            yield from _untyped(item, node["properties"][key], f"{path}.{key}")


# Chart values -> the option they become; the program's own parsers must accept them.
VALUE_OPTIONS = {
    "upstream.timeout": "upstream_timeout",
    "upstream.connections": "upstream_connections",
    "proxy.basePath": "base_path",
    "proxy.metadataTtl": "metadata_ttl",
    "proxy.finalizedAfter": "finalized_after",
    "proxy.qidoTtl": "qido_ttl",
    "proxy.staleIfError": "stale_if_error",
    "proxy.maxBody": "max_body",
    "proxy.prefetch": "prefetch",
    "proxy.logFormat": "log_format",
    "proxy.logLevel": "log_level",
    "proxy.shutdownGrace": "shutdown_grace",
    "proxy.stow.maxInstances": "stow_max_instances",
    "proxy.stow.maxBytes": "stow_max_bytes",
    "proxy.stow.concurrency": "stow_concurrency",
    "proxy.stow.retries": "stow_retries",
}


@pytest.mark.parametrize("source", [None, *EXAMPLES], ids=lambda p: p.stem if p else "defaults")
def test_chart_values_parse_with_the_program_parsers(
    source: Path | None, values: dict[str, Any]
) -> None:
    merged = _merged(values, _yaml(source)) if source else values
    for path, option in VALUE_OPTIONS.items():
        value = _lookup(merged, path)
        OPTION_FIELDS[option].metadata["parse"](value)
    for auth in ("upstream_auth", "inbound_auth"):
        section = auth.split("_")[0]
        OPTION_FIELDS[auth].metadata["parse"](merged[section]["auth"])


def _lookup(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


# -- templates -----------------------------------------------------------------------------

COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.DOTALL)
ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
CONTROL = re.compile(
    r"^\s*\{\{-?\s*(?:(?:if|else|end|range|with|define|fail|include|toYaml)\b|\$\w+\s*:?=)"
)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def stub_template(text: str) -> str:
    """Template -> YAML: comments removed, control lines dropped, inline actions -> STUB.

    A line holding only a control action (if/range/with/end, an assignment, a block
    include with nindent) is dropped: both branches of an if remain, which YAML accepts as
    long as they use distinct keys, which the templates do.
    """
    text = COMMENT.sub("", text)
    lines = [line for line in text.splitlines() if not _only_action(line)]
    return ACTION.sub("STUB", "\n".join(lines))


def _only_action(line: str) -> bool:
    return bool(CONTROL.match(line)) and not ACTION.sub("", line).strip()


YAML_TEMPLATES = sorted(TEMPLATES.glob("*.yaml"))
# Defines in _helpers.tpl that produce YAML (the others produce one scalar).
YAML_DEFINES = [
    "dicomweb-proxy.envBase",
    "dicomweb-proxy.probe",
    "dicomweb-proxy.container",
    "dicomweb-proxy.volumes",
    "dicomweb-proxy.labels",
]


def helper_defines() -> dict[str, str]:
    text = COMMENT.sub("", (TEMPLATES / "_helpers.tpl").read_text())
    parts = re.split(r'\{\{-?\s*define\s+"([^"]+)"\s*-?\}\}', text)
    pairs = zip(parts[1::2], parts[2::2], strict=True)
    return {name: body[: body.rindex("{{- end }}")] for name, body in pairs}


@pytest.mark.parametrize("template", YAML_TEMPLATES, ids=lambda p: p.name)
def test_template_is_yaml_once_actions_are_stubbed(template: Path) -> None:
    stubbed = stub_template(template.read_text())
    assert "{{" not in stubbed and "}}" not in stubbed
    documents = [doc for doc in yaml.safe_load_all(stubbed) if doc is not None]
    assert documents, f"{template.name} stubbed to nothing"
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document)


@pytest.mark.parametrize("name", YAML_DEFINES)
def test_helper_is_yaml_once_actions_are_stubbed(name: str) -> None:
    stubbed = stub_template(helper_defines()[name])
    assert "{{" not in stubbed
    assert isinstance(yaml.safe_load(stubbed), dict | list)


def test_stubber_keeps_structure() -> None:
    text = (
        "{{/* a comment\n over lines */}}\n"
        "kind: {{ .Values.kind | quote }}\n"
        "{{- if .Values.x }}\n"
        "labels:\n"
        '  {{- include "x.labels" . | nindent 2 }}\n'
        "{{- end }}\n"
    )
    assert yaml.safe_load(stub_template(text)) == {"kind": "STUB", "labels": None}


VALUES_REF = re.compile(r"(?:\.Values|\$values|(?<![\w)])\.values)((?:\.[A-Za-z_]\w*)+)")
ALIAS = re.compile(r"\$(\w+)\s*:=\s*\.Values((?:\.[A-Za-z_]\w*)+)\s*-?\}\}")
# Defines whose argument is the values themselves (see their comments in _helpers.tpl).
VALUES_ARGUMENT_DEFINES = [
    "dicomweb-proxy.env",
    "dicomweb-proxy.envBase",
    "dicomweb-proxy.cacheSize",
    "dicomweb-proxy.needsSecret",
]


def referenced_value_paths() -> set[str]:
    """Every values path a template reads, through .Values, $values, .values or aliases."""
    paths: set[str] = set()
    for template in [*YAML_TEMPLATES, TEMPLATES / "NOTES.txt", TEMPLATES / "_helpers.tpl"]:
        text = COMMENT.sub("", template.read_text())
        paths |= {match.group(1)[1:] for match in VALUES_REF.finditer(text)}
        for alias, target in ALIAS.findall(text):
            for match in re.finditer(rf"\${alias}((?:\.[A-Za-z_]\w*)+)", text):
                paths.add(target[1:] + match.group(1))
    defines = helper_defines()
    for name in VALUES_ARGUMENT_DEFINES:
        body = STRING.sub("", defines[name])
        paths |= {m.group(1) for m in re.finditer(r"(?<![\w)$])\.([a-z]\w*(?:\.\w+)*)", body)}
    return paths


def test_every_values_path_a_template_reads_exists(values: dict[str, Any]) -> None:
    paths = referenced_value_paths()
    assert {"upstream.url", "cache.persistence.enabled", "scaleOut.balancer.weight"} <= paths
    missing = [path for path in sorted(paths) if not _exists(values, path)]
    assert not missing, f"templates read values that values.yaml does not define: {missing}"


def _exists(tree: Any, path: str) -> bool:
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_deployment_rolls_on_config_and_secret_changes() -> None:
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    assert "checksum/config:" in deployment and "checksum/secret:" in deployment


def test_container_probes_and_hardening(values: dict[str, Any]) -> None:
    container = yaml.safe_load(stub_template(helper_defines()["dicomweb-proxy.container"]))
    assert {"livenessProbe", "readinessProbe", "resources", "securityContext"} <= set(container)
    assert '"/healthz"' in helper_defines()["dicomweb-proxy.container"]
    assert values["probes"]["readiness"]["path"] == "/readyz"
    hardening = values["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]
    assert values["podSecurityContext"]["runAsNonRoot"] is True


def test_credentials_are_files_never_environment() -> None:
    env = helper_defines()["dicomweb-proxy.envBase"]
    names = set(re.findall(r"^(DICOMWEB_PROXY_\w+):", env, re.MULTILINE))
    secret_options = {
        option_env(name) for name, item in OPTION_FIELDS.items() if item.metadata["secret"]
    }
    secret_options |= {
        "DICOMWEB_PROXY_UPSTREAM_PASSWORD",
        "DICOMWEB_PROXY_UPSTREAM_TOKEN",
        "DICOMWEB_PROXY_OAUTH2_CLIENT_SECRET",
    }
    assert not names & secret_options
    for file_option in (
        "UPSTREAM_PASSWORD_FILE",
        "UPSTREAM_TOKEN_FILE",
        "OAUTH2_CLIENT_SECRET_FILE",
        "ADMIN_TOKEN_FILE",
    ):
        assert "DICOMWEB_PROXY_" + file_option in names


def test_sidecar_template_binds_localhost() -> None:
    defines = helper_defines()
    assert '"localhost" true' in defines["dicomweb-proxy.sidecar"]
    assert 'ternary "127.0.0.1" "0.0.0.0" .localhost' in defines["dicomweb-proxy.container"]
    assert "dicomweb-proxy.sidecarVolumes" in defines


# -- scale-out: StatefulSet, headless Service, HAProxy balancer (SPEC section 7) -------------

REFERENCE_HAPROXY = ROOT / "deploy" / "balancers" / "haproxy.cfg"


def _stubbed_documents(name: str) -> list[dict[str, Any]]:
    stubbed = stub_template((TEMPLATES / name).read_text())
    return [doc for doc in yaml.safe_load_all(stubbed) if doc is not None]


def test_scale_out_runs_the_replicas_as_a_statefulset_under_a_headless_service() -> None:
    (statefulset,) = _stubbed_documents("statefulset.yaml")
    assert statefulset["kind"] == "StatefulSet"
    spec = statefulset["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    template = (TEMPLATES / "statefulset.yaml").read_text()
    assert 'serviceName: {{ include "dicomweb-proxy.headlessName" . }}' in template
    # One claim per pod, named like the emptyDir volume the container mounts.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "dicomweb-proxy-cache"
    assert '"claimTemplate" .Values.cache.persistence.enabled' in template
    # Every replica rewrites URLs to the balancer's public URL.
    assert '"publicUrl" (include "dicomweb-proxy.balancerUrl" .)' in template
    assert "DICOMWEB_PROXY_PUBLIC_URL" in helper_defines()["dicomweb-proxy.container"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
    headless = [d for d in _stubbed_documents("service.yaml") if d["spec"].get("clusterIP")]
    assert headless and headless[0]["spec"]["clusterIP"] == "None"
    assert headless[0]["spec"]["publishNotReadyAddresses"] is True
    assert headless[0]["spec"]["selector"]["app.kubernetes.io/component"] == "proxy"


def test_scale_out_puts_haproxy_in_front_with_its_config_from_a_configmap() -> None:
    deployment, budget = _stubbed_documents("balancer.yaml")
    assert deployment["kind"] == "Deployment" and budget["kind"] == "PodDisruptionBudget"
    pod = deployment["spec"]["template"]
    assert "checksum/config" in pod["metadata"]["annotations"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
    assert container["volumeMounts"][0]["mountPath"] == "/usr/local/etc/haproxy"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "stats"}
    (config,) = _stubbed_documents("balancer-configmap.yaml")
    assert set(config["data"]) == {"haproxy.cfg"}
    assert '"dicomweb-proxy.haproxyConfig"' in (TEMPLATES / "balancer-configmap.yaml").read_text()
    # The Service clients and the Ingress reach selects the balancer in scale-out mode.
    service = (TEMPLATES / "service.yaml").read_text()
    assert "app.kubernetes.io/component: balancer" in service
    # No Deployment of proxies and no shared claim beside the StatefulSet.
    assert "(not .Values.scaleOut.enabled)" in (TEMPLATES / "deployment.yaml").read_text()
    assert "(not .Values.scaleOut.enabled)" in (TEMPLATES / "pvc.yaml").read_text()
    assert 'ternary "StatefulSet" "Deployment"' in (TEMPLATES / "hpa.yaml").read_text()


def test_the_ingress_nginx_study_routing_is_gone() -> None:
    for template in [*TEMPLATES.iterdir(), CHART / "values.yaml", *EXAMPLES]:
        text = template.read_text()
        assert "upstream-hash-by" not in text, template.name
        assert "ingress.routing" not in text and "$ingress.routing" not in text, template.name


def _sections(lines: list[str]) -> dict[str, list[list[str]]]:
    """HAProxy config lines by section ("backend by-study"), comments dropped, each line
    as tokens with environment expansions and template actions as the wildcard "*"."""
    sections: dict[str, list[list[str]]] = {}
    current = ""
    for raw in lines:
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = ["*" if "${" in tok or "STUB" in tok else tok for tok in line.split()]
        if not line.startswith((" ", "\t")):
            current = " ".join(tokens)
            sections[current] = []
        else:
            sections[current].append(tokens)
    return sections


def _matches(reference: list[str], rendered: list[str]) -> bool:
    """``reference`` is ``rendered`` or a prefix of it, a wildcard on either side matching."""
    if len(rendered) < len(reference):
        return False
    return all(a == b or "*" in (a, b) for a, b in zip(reference, rendered, strict=False))


def test_chart_haproxy_config_keeps_every_directive_of_the_reference_file() -> None:
    """The chart renders its own haproxy.cfg (servers by pod name, resolved at run time);
    everything else must be what the fleet test measured in deploy/balancers/haproxy.cfg."""
    reference = _sections(REFERENCE_HAPROXY.read_text().splitlines())
    define = COMMENT.sub("", helper_defines()["dicomweb-proxy.haproxyConfig"])
    lines = [line for line in define.splitlines() if not _only_action(line)]
    rendered = _sections(ACTION.sub("STUB", "\n".join(lines)).splitlines())
    for section, directives in reference.items():
        assert section in rendered, f"{section} missing from the chart's haproxy.cfg"
        for tokens in directives:
            if tokens[0] == "server":
                continue  # one per StatefulSet pod, below
            assert any(_matches(tokens, other) for other in rendered[section]), (
                f"{section}: {' '.join(tokens)!r} is not in the chart's haproxy.cfg"
            )
    by_study = [line for line in rendered["backend by-study"] if line[0] == "server"]
    assert by_study and all(line[-2] == "id" for line in by_study)
    tracking = [line for line in rendered["backend any-replica"] if line[0] == "server"]
    assert tracking and all(line[-2] == "track" for line in tracking)
    assert ["balance", "uri", "depth", "*", "path-only"] in rendered["backend by-study"]
    assert ["hash-type", "consistent"] in rendered["backend by-study"]


def test_hash_depth_follows_the_base_path() -> None:
    """``balance uri depth`` = segments of --base-path + 2 (docs/how-to/scale-out.md)."""
    define = helper_defines()["dicomweb-proxy.haproxyConfig"]
    assert '$depth := add 2 (len (compact (splitList "/" .Values.proxy.basePath)))' in define
    assert "balance uri depth {{ $depth }} path-only" in define


# -- environment variable names --------------------------------------------------------------

ENV_NAME = re.compile(r"\bDICOMWEB_PROXY_[A-Z0-9_]*[A-Z0-9]\b")


def chart_and_image_env_names() -> set[str]:
    sources = [DOCKERFILE, *TEMPLATES.iterdir(), CHART / "values.yaml", *EXAMPLES]
    names = set()
    for source in sources:
        names |= set(ENV_NAME.findall(source.read_text()))
    return names - {"DICOMWEB_PROXY_"}


def test_every_environment_variable_set_is_a_program_option() -> None:
    known = {option_env(name) for name in OPTION_FIELDS}
    names = chart_and_image_env_names()
    assert {"DICOMWEB_PROXY_UPSTREAM_URL", "DICOMWEB_PROXY_LISTEN"} <= names
    unknown = sorted(names - known)
    assert not unknown, f"set by the chart or Dockerfile but not an option: {unknown}"


# -- Grafana dashboard -------------------------------------------------------------------------


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_queries_only_spec_metrics_and_covers_them_all() -> None:
    used = set()
    for expr in _dashboard_exprs():
        for name in re.findall(r"\bdicomweb_proxy_\w+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in SPEC_METRICS, f"{name} is not a SPEC section 6 metric"
            assert name == base or base in HISTOGRAMS
            used.add(base)
    assert used == set(SPEC_METRICS)


def test_dashboard_groups_by_spec_labels_only() -> None:
    for expr in _dashboard_exprs():
        names = re.findall(r"dicomweb_proxy_\w+", expr)
        metrics = {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
        allowed = set().union(*(SPEC_METRICS[m] for m in metrics)) | TARGET_LABELS | {"le"}
        for group in re.findall(r"by \(([^)]*)\)", expr):
            assert {label.strip() for label in group.split(",")} <= allowed, expr
        for label in re.findall(r"(\w+)=~?\"", expr):
            assert label in allowed, expr


def test_dashboard_ships_as_a_grafana_sidecar_configmap(values: dict[str, Any]) -> None:
    template = (TEMPLATES / "dashboards-configmap.yaml").read_text()
    assert '.Files.Get "dashboards/dicomweb-proxy.json"' in template
    assert values["dashboards"]["labels"] == {"grafana_dashboard": "1"}
