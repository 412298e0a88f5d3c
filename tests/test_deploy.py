"""The deployment files in ``deploy/``, checked against Clarion's own code.

No container engine, cluster, HAProxy or systemd runs here, so each file is parsed and
every value it shares with Clarion is checked against the real thing: probe paths
against the ASGI app, command lines against the CLI's parser, configuration against
``load_config``, timeouts against the configuration's defaults, and the image's
health check is run against a real node on 127.0.0.1.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final

import anyio
import hypercorn.config
import msgspec
import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load_all is used
from packaging.specifiers import SpecifierSet

from channels.config import BrokerConfig
from service.cli import _parser, main
from service.runner import AFTER_DRAIN_SECONDS, hypercorn_config
from service.session import CUT_OFF_CLOSE_SECONDS
from service.settings import Settings, parse_bind
from tests.support.asgi import http_request, http_scope, running_app
from tests.support.server import http_exchange, running_server

if TYPE_CHECKING:
    from service.app import Clarion
    from service.runner import Backend
    from service.types import Message

ROOT: Final = Path(__file__).resolve().parent.parent
DEPLOY: Final = ROOT / "deploy"
K8S: Final = DEPLOY / "k8s"
CONFIG_PATH: Final = "/etc/clarion/channels.yaml"
"""Where the image, compose, Kubernetes and systemd all put the channels file."""
NODES: Final = ("clarion-1", "clarion-2", "clarion-3")
SECRETS: Final = {"CLARION_API_KEY": "test-api-key", "REDIS_PASSWORD": "test-redis-password"}
DEFAULTS: Final = Settings().server
#: How long after the drain's grace a node may take to exit: hypercorn's wait, then a
#: cut-off client's close frame.
SHUTDOWN_AFTER_GRACE: Final = AFTER_DRAIN_SECONDS + CUT_OFF_CLOSE_SECONDS
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PINNED_TAG: Final = re.compile(r"^[a-z0-9._/-]+:\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")


# --- readers -------------------------------------------------------------------------


def _yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as file:
        return [document for document in yaml.safe_load_all(file) if document is not None]


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/k8s by (kind, name), the kustomization left out."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in _yaml_documents(path):
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


def _deployment() -> dict[str, Any]:
    return _k8s_objects()["Deployment", "clarion"]


def _clarion_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _deployment()["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe's or Service's port (a number or a port name) in *container*."""
    for declared in container["ports"]:
        if port in {declared["containerPort"], declared.get("name")}:
            return int(declared["containerPort"])
    raise AssertionError(f"{container['name']} declares no port {port!r}")


def _configmap_channels() -> str:
    text: str = _k8s_objects()["ConfigMap", "clarion-config"]["data"]["channels.yaml"]
    return text


def _variables(value: Any) -> set[str]:
    """The ``${VAR}`` references in the values (not the comments) of parsed YAML."""
    if isinstance(value, str):
        return set(_ENV_REF.findall(value))
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*map(_variables, value))
    return set()


def _cluster_variables() -> set[str]:
    (document,) = _yaml_documents(DEPLOY / "cluster.yaml")
    return _variables(document)


def _cluster_config() -> Settings:
    return Settings.load(DEPLOY / "cluster.yaml", env=SECRETS)


def _compose() -> dict[str, Any]:
    (compose,) = _yaml_documents(DEPLOY / "compose.yaml")
    return dict(compose)


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comments and blank lines, also inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, arguments = pending.strip().partition(" ")
        instructions.append((word.upper(), arguments.strip()))
        pending = ""
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, the FROM line first, global ARGs resolved."""
    defaults: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for word, arguments in _dockerfile():
        if word == "ARG" and not stages:
            name, _, value = arguments.partition("=")
            defaults[name] = value
        elif word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda found: defaults[found[1]], arguments)
            stages.append([(word, image)])
        elif stages:
            stages[-1].append((word, arguments))
    return stages


def _instruction(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [arguments for found, arguments in stage if found == word]


def _image_argv() -> list[str]:
    """What the image runs by default: ENTRYPOINT then CMD (both in exec form)."""
    final = _stages()[-1]
    (entrypoint,) = _instruction(final, "ENTRYPOINT")
    (cmd,) = _instruction(final, "CMD")
    argv: list[str] = [*json.loads(entrypoint), *json.loads(cmd)]
    return argv


def _script_name() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    (name,) = (name for name, target in project["scripts"].items() if target == "service.cli:main")
    return str(name)


def _serve_args(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse ``clarion <argv>`` with Clarion's own parser (argparse exits on an error)."""
    monkeypatch.delenv("CLARION_CONFIG", raising=False)  # the parser's default reads it
    return _parser().parse_args(argv)


def _haproxy() -> dict[str, list[str]]:
    """haproxy.cfg's sections ("backend clarion_nodes") and their lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in (DEPLOY / "haproxy.cfg").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw[0].isspace():
            current = sections.setdefault(line, [])
        else:
            current.append(" ".join(line.split()))
    return sections


def _haproxy_seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert found is not None, f"not an HAProxy time: {value!r}"
    unit = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(found[1]) * unit[found[2]]


def _duration_seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+)\s*(ms|s|sec|min|m)?", value)
    assert found is not None, f"not a systemd time span we read: {value!r}"
    return int(found[1]) * {"ms": 1e-3, None: 1, "s": 1, "sec": 1, "min": 60, "m": 60}[found[2]]


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(DEPLOY / "clarion.service")
    return unit


def _dockerignored(path: str) -> bool:
    """Whether ``docker build -f deploy/Dockerfile .`` leaves *path* out of the context.

    Docker's rules: the last pattern that matches the path or one of its parent
    directories decides, and ``!`` includes again.
    """
    excluded = False
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = re.compile(_glob_regex(pattern.removeprefix("!").strip("/")))
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _glob_regex(pattern: str) -> str:
    tokens = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(wildcards.get(token, re.escape(token)) for token in tokens)


async def _get(app: Clarion, path: str) -> tuple[int, bytes]:
    """GET *path* from *app* in memory; return the status and the raw body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope("GET", path), receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


# --- every file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(DEPLOY.rglob("*.yaml")),
    ids=lambda path: str(path.relative_to(DEPLOY)),
)
def test_every_yaml_file_parses(path: Path) -> None:
    documents = _yaml_documents(path)
    assert documents, f"{path} holds no document"
    assert all(isinstance(document, dict) for document in documents)


def test_kubernetes_objects_are_complete() -> None:
    objects = _k8s_objects()
    for (kind, name), document in objects.items():
        assert document["apiVersion"], (kind, name)
        assert document["metadata"]["name"] == name
    kinds = {kind for kind, _ in objects}
    assert kinds >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    assert objects["HorizontalPodAutoscaler", "clarion"]["apiVersion"] == "autoscaling/v2"
    assert objects["PodDisruptionBudget", "clarion"]["apiVersion"] == "policy/v1"
    # `kubectl apply -k deploy/k8s` applies every file of the directory.
    (kustomization,) = _yaml_documents(K8S / "kustomization.yaml")
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


@pytest.mark.parametrize(
    "image",
    sorted(
        {
            *(stage[0][1].split(" ")[0] for stage in _stages()),
            *(service["image"] for service in _compose()["services"].values()),
            *(
                container["image"]
                for document in _k8s_objects().values()
                if document["kind"] == "Deployment"
                for container in document["spec"]["template"]["spec"]["containers"]
            ),
        }
    ),
    ids=str,
)
def test_images_are_pinned_to_a_patch_version(image: str) -> None:
    assert "latest" not in image
    assert _PINNED_TAG.fullmatch(image), f"{image} has no exact x.y.z tag"


def test_clarion_images_are_the_project_version() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        version = tomllib.load(file)["project"]["version"]
    compose_nodes = [_compose()["services"][node]["image"] for node in NODES]
    assert {*compose_nodes, _clarion_container()["image"]} == {f"clarion:{version}"}
    assert f"-t clarion:{version} ." in (DEPLOY / "Dockerfile").read_text()


# --- the channels configuration ---------------------------------------------------------


def test_cluster_config_uses_redis_with_secrets_from_the_environment() -> None:
    config = _cluster_config()
    assert config.broker.kind == "redis"
    assert config.broker.url == "redis://:test-redis-password@redis:6379/0"
    assert config.server.api_keys == ["test-api-key"]
    assert parse_bind(config.server.bind) == ("0.0.0.0", 8000)
    assert config.server.log_format == "json"  # for the containers' log collectors
    # The secrets themselves are never in the file.
    assert _cluster_variables() == set(SECRETS)


def test_configmap_embeds_cluster_yaml_verbatim() -> None:
    # Kustomize cannot read files outside deploy/k8s, so the text is copied, not generated.
    embedded = _configmap_channels()
    assert embedded == (DEPLOY / "cluster.yaml").read_text()
    assert Settings.parse(embedded, env=SECRETS) == _cluster_config()


def test_clarion_check_accepts_cluster_yaml_and_hides_the_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    assert main(["check", str(DEPLOY / "cluster.yaml")]) == 0
    out, _ = capsys.readouterr()
    assert "kind: redis" in out
    for value in SECRETS.values():
        assert value not in out


def test_every_config_variable_reaches_the_nodes() -> None:
    """A ``${VAR}`` the node's environment lacks stops it at startup."""
    needed = _cluster_variables()
    for node in NODES:
        assert set(_compose()["services"][node]["environment"]) == needed
    env = _clarion_container()["env"]
    assert {variable["name"] for variable in env} == needed
    secrets = {variable["valueFrom"]["secretKeyRef"]["name"] for variable in env}
    assert secrets == {"clarion-secrets"}
    # Redis is given the same password the nodes put in their broker URL.
    redis = _compose()["services"]["redis"]
    assert "${REDIS_PASSWORD:?set REDIS_PASSWORD}" in redis["command"]
    (redis_container,) = _k8s_objects()["Deployment", "redis"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "$(REDIS_PASSWORD)" in redis_container["args"]
    assert {
        (variable["name"], variable["valueFrom"]["secretKeyRef"]["name"])
        for variable in redis_container["env"]
    } >= {("REDIS_PASSWORD", "clarion-secrets")}


def test_the_broker_url_names_the_redis_service() -> None:
    url = _cluster_config().broker.redis_url
    host, port = url.rpartition("@")[2].split("/")[0].split(":")
    assert host in _compose()["services"]
    service = _k8s_objects()["Service", host]
    assert [entry["port"] for entry in service["spec"]["ports"]] == [int(port)]


# --- probes and health checks, against the app -------------------------------------------


def _probe_paths() -> dict[str, str]:
    """Every HTTP path a deployment file probes, by who probes it."""
    container = _clarion_container()
    paths = {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    paths["prometheus"] = annotations["prometheus.io/path"]
    (healthcheck,) = _instruction(_stages()[-1], "HEALTHCHECK")
    found = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", healthcheck)
    assert found is not None, healthcheck
    paths["HEALTHCHECK"] = found[2]
    (check,) = [line for line in _haproxy()["backend clarion_nodes"] if "http-check send" in line]
    paths["haproxy"] = check.split(" uri ")[1].split(" ")[0]
    return paths


def test_probes_check_liveness_and_readiness() -> None:
    paths = _probe_paths()
    assert paths["readinessProbe"] == paths["haproxy"] == "/ready"
    assert paths["livenessProbe"] == paths["startupProbe"] == paths["HEALTHCHECK"] == "/health"
    assert paths["prometheus"] == "/metrics"


async def test_every_probed_path_is_served() -> None:
    config = msgspec.structs.replace(_cluster_config(), broker=BrokerConfig())
    with anyio.fail_after(10):
        async with running_app(config) as app:
            for path in set(_probe_paths().values()):
                status, body = await _get(app, path)
                assert status == 200, (path, body)
            health = await http_request(app, "GET", "/health")
            assert health[::2] == (200, {"status": "ok"})
            ready = await http_request(app, "GET", "/ready")
            assert ready[::2] == (200, {"status": "ready"})
            _, metrics = await _get(app, "/metrics")
            assert b"# TYPE" in metrics  # Prometheus' text format


async def test_image_healthcheck_passes_only_while_the_node_serves(
    anyio_backend: Backend, free_tcp_port: int, redis_broker: BrokerConfig
) -> None:
    """Run the image's HEALTHCHECK command against a node of the cluster configuration."""
    (healthcheck,) = _instruction(_stages()[-1], "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    (exposed,) = _instruction(_stages()[-1], "EXPOSE")
    assert f"http://127.0.0.1:{exposed}/health" in argv[2]
    code = argv[2].replace(f"127.0.0.1:{exposed}", f"127.0.0.1:{free_tcp_port}")
    config = msgspec.structs.replace(_cluster_config(), broker=redis_broker)
    with anyio.fail_after(30):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            passed = await anyio.run_process([sys.executable, "-c", code], check=False)
            assert passed.returncode == 0, passed.stderr
            # What HAProxy and the readinessProbe wait for: Redis answers, the node is ready.
            while (await http_exchange(server, "GET", "/ready"))[0] != 200:  # noqa: ASYNC110 - polls HTTP as a probe does
                await anyio.sleep(0.05)
        failed = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert failed.returncode != 0


# --- the image ---------------------------------------------------------------------------


def test_image_command_is_clarion_serve_on_the_exposed_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = _image_argv()
    assert argv[0] == _script_name()
    args = _serve_args(argv[1:], monkeypatch)
    assert (args.command, args.config, args.workers) == ("serve", CONFIG_PATH, 1)
    final = _stages()[-1]
    (exposed,) = _instruction(final, "EXPOSE")
    assert parse_bind(args.bind) == ("0.0.0.0", int(exposed))
    # The default configuration is copied to where the command reads it.
    assert f"deploy/channels.yaml {CONFIG_PATH}" in _instruction(final, "COPY")
    assert _instruction(final, "STOPSIGNAL") == ["SIGTERM"]


def test_image_is_built_in_stages_from_a_pinned_python() -> None:
    builder, *_, final = _stages()
    with (ROOT / "pyproject.toml").open("rb") as file:
        requires = SpecifierSet(tomllib.load(file)["project"]["requires-python"])
    for stage in (builder, final):
        image = stage[0][1].split(" ")[0]
        found = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-\w+", image)
        assert found is not None, image
        assert found[1] in requires
    assert builder[0][1].endswith(" AS builder")
    # Only the virtualenv comes from the builder: no compiler, wheel cache or sources.
    assert [c for c in _instruction(final, "COPY") if c.startswith("--from=")] == [
        "--from=builder /opt/clarion/venv /opt/clarion/venv"
    ]
    env = " ".join(_instruction(final, "ENV"))
    assert "PATH=/opt/clarion/venv/bin:$PATH" in env


def test_image_runs_as_a_numeric_non_root_user() -> None:
    users = _instruction(_stages()[-1], "USER")
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert re.fullmatch(r"[1-9][0-9]*", uid), uid
    assert re.fullmatch(r"[1-9][0-9]*", gid), gid
    pod = _deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("pyproject.toml", False),
        ("README.md", False),  # pyproject's readme: the wheel build needs it
        ("channels/config.py", False),
        ("channels/brokers/redis.py", False),
        ("service/cli.py", False),
        ("service/py.typed", False),
        ("deploy/channels.yaml", False),
        ("deploy/cluster.yaml", True),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("tests/conftest.py", True),
        ("bench/results/runs.jsonl", True),
        ("service/__pycache__/cli.cpython-311.pyc", True),
        ("__pycache__/x.pyc", True),
    ],
)
def test_build_context_holds_what_the_image_is_built_from(path: str, ignored: bool) -> None:
    assert _dockerignored(path) is ignored


def test_every_copied_source_is_in_the_build_context() -> None:
    for stage in _stages():
        for copy in _instruction(stage, "COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not _dockerignored(source), f"{source} is left out of the context"


# --- compose and HAProxy -------------------------------------------------------------------


def test_compose_runs_three_nodes_on_redis_behind_a_balancer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", *NODES, "lb"}
    assert "healthcheck" in services["redis"]
    (exposed,) = _instruction(_stages()[-1], "EXPOSE")
    for node in NODES:
        service = services[node]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / service["build"]["context"] / "deploy" / "Dockerfile").is_file()
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
        # The cluster file replaces the image's default, at the path the command reads.
        args = _serve_args(service["command"], monkeypatch)
        assert args.config == CONFIG_PATH
        assert parse_bind(args.bind)[1] == int(exposed)
        assert service["volumes"] == [f"./cluster.yaml:{CONFIG_PATH}:ro"]
        # docker stop waits this long before SIGKILL: the drain must fit.
        grace = _duration_seconds(service["stop_grace_period"])
        assert grace > _cluster_config().server.shutdown_grace_seconds + SHUTDOWN_AFTER_GRACE
        assert service["stop_signal"] == "SIGTERM"
    # The balancer starts once the nodes are healthy (the image's HEALTHCHECK).
    assert services["lb"]["depends_on"] == {
        node: {"condition": "service_healthy"} for node in NODES
    }
    assert _instruction(_stages()[-1], "HEALTHCHECK")


def test_haproxy_balances_round_robin_over_the_compose_nodes() -> None:
    sections = _haproxy()
    backend = sections["backend clarion_nodes"]
    assert "balance roundrobin" in backend
    # No stickiness: a reconnecting client recovers on any node.
    for line in backend:
        assert not line.startswith(("stick", "cookie", "hash-type", "balance source"))
    assert "option httpchk" in backend
    assert "http-check expect status 200" in backend
    servers = [line.split()[1:3] for line in backend if line.startswith("server ")]
    (exposed,) = _instruction(_stages()[-1], "EXPOSE")
    assert servers == [[node, f"{node}:{exposed}"] for node in NODES]
    assert any(line.startswith("default-server check") for line in backend)
    # The frontend listens where compose publishes the balancer.
    (bind,) = [line for line in sections["frontend clarion"] if line.startswith("bind ")]
    lb = _compose()["services"]["lb"]
    assert lb["volumes"] == ["./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    (published,) = lb["ports"]
    host, _, container_port = published.split(":")
    assert host == "127.0.0.1"
    assert bind == f"bind :{container_port}"


def test_haproxy_keeps_quiet_websockets_open_between_pings() -> None:
    timeouts = [line.split(" ") for line in _haproxy()["defaults"] if line.startswith("timeout ")]
    defaults = {name: value for _, name, value in timeouts}
    server = _cluster_config().server
    assert server.ping_interval_seconds is not None
    assert _haproxy_seconds(defaults["tunnel"]) > server.ping_interval_seconds
    # Until the upgrade, the balancer gives a request as long as the node does.
    assert _haproxy_seconds(defaults["http-request"]) == server.handshake_timeout_seconds


# --- Kubernetes ------------------------------------------------------------------------


def test_kubernetes_ports_match_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    container = _clarion_container()
    args = _serve_args(container["args"], monkeypatch)
    assert args.command == "serve"
    port = parse_bind(args.bind)[1]
    assert port == parse_bind(_cluster_config().server.bind)[1]
    assert [declared["containerPort"] for declared in container["ports"]] == [port]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _container_port(container, container[kind]["httpGet"]["port"]) == port, kind
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    (service_port,) = _k8s_objects()["Service", "clarion"]["spec"]["ports"]
    assert _container_port(container, service_port["targetPort"]) == port


def test_kubernetes_mounts_the_configmap_where_the_command_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _clarion_container()
    config = PurePosixPath(_serve_args(container["args"], monkeypatch).config)
    assert str(config) == CONFIG_PATH
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent)]
    assert mount["readOnly"] is True
    volumes = {
        volume["name"]: volume for volume in _deployment()["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes[mount["name"]]["configMap"]["name"] == "clarion-config"
    assert config.name in _k8s_objects()["ConfigMap", "clarion-config"]["data"]


def test_kubernetes_stops_a_pod_after_its_endpoint_is_gone_and_its_clients_drained() -> None:
    container = _clarion_container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    # Endpoints drop a terminating pod at once, but whatever follows the readiness probe
    # instead (some ingresses, meshes) needs this long to see the pod go.
    readiness = container["readinessProbe"]
    assert pause >= readiness["periodSeconds"] * readiness["failureThreshold"]
    grace = _cluster_config().server.shutdown_grace_seconds
    # SIGTERM comes after preStop; then the drain, then hypercorn's extra second.
    pod = _deployment()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > pause + grace + SHUTDOWN_AFTER_GRACE
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_kubernetes_scaling_and_disruptions_keep_nodes_serving() -> None:
    objects = _k8s_objects()
    deployment = objects["Deployment", "clarion"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service", "clarion"]["spec"]["selector"].items() <= labels.items()
    pdb = objects["PodDisruptionBudget", "clarion"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler", "clarion"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": "clarion",
    }
    assert hpa["minReplicas"] == deployment["spec"]["replicas"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]
    # Utilization targets are relative to the request: without one the HPA cannot act.
    (metric,) = hpa["metrics"]
    resource = metric["resource"]["name"]
    assert resource in _clarion_container()["resources"]["requests"]


# --- hypercorn.toml --------------------------------------------------------------------


def test_hypercorn_toml_sets_what_clarion_serve_sets() -> None:
    path = DEPLOY / "hypercorn.toml"
    with path.open("rb") as file:
        keys = tomllib.load(file)
    # hypercorn ignores unknown keys in silence: a typo would just be lost.
    known = set(dir(hypercorn.config.Config))
    assert set(keys) <= known, set(keys) - known
    loaded = hypercorn.config.Config.from_toml(path)
    assert loaded.workers == 1  # the memory broker: one process per node
    assert loaded.bind == [DEFAULTS.bind]
    assert loaded.websocket_max_message_size == DEFAULTS.max_request_bytes
    assert loaded.keep_alive_timeout == DEFAULTS.handshake_timeout_seconds
    derived = hypercorn_config(Settings())
    for key in set(keys) - {"workers", "worker_class"}:
        assert getattr(loaded, key) == getattr(derived, key), key


# --- systemd ---------------------------------------------------------------------------


def test_systemd_unit_serves_the_config_and_drains_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _unit()["Service"]
    assert service["Type"] in {"exec", "simple"}
    argv = shlex.split(service["ExecStart"])
    program = PurePosixPath(argv[0])
    assert program.name == _script_name()
    assert program.parent == PurePosixPath("/opt/clarion/venv/bin")
    args = _serve_args(argv[1:], monkeypatch)
    assert (args.command, args.config) == ("serve", CONFIG_PATH)
    assert shlex.split(service["ExecReload"]) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the main process, which drains
    # SIGKILL comes after TimeoutStopSec: the drain and hypercorn's extra second must fit.
    stop = _duration_seconds(service["TimeoutStopSec"])
    assert stop > DEFAULTS.shutdown_grace_seconds + SHUTDOWN_AFTER_GRACE
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) > DEFAULTS.max_connections


def test_systemd_unit_runs_unprivileged_with_secrets_outside_the_unit() -> None:
    service = _unit()["Service"]
    assert service["User"] not in {"root", "0"}
    assert service["EnvironmentFile"].removeprefix("-") == "/etc/clarion/clarion.env"
    assert not service["EnvironmentFile"].startswith("-")  # missing secrets: fail to start
    assert "CLARION_API_KEY" not in service.get("Environment", "")
    for option, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[option] == value, option
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"
