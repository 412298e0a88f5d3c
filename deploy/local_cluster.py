#!/usr/bin/env python3
"""Run the cluster topology on 127.0.0.1 without containers: one redis-server, three
``clarion serve`` nodes sharing channels through it, and HAProxy in front of them.

    deploy/local-cluster [--port 8080] [--backend asyncio|trio] [--base-port N]
                         [--redis-server PATH] [--haproxy PATH] [--json] [--keep]

It is the same topology as the compose file, for a demo (open the printed
``ws://127.0.0.1:PORT/ws``) and for CI (tests/integration/test_local_cluster.py).

- redis-server runs on a free port with nothing saved (``--save "" --appendonly no``)
  and its own directory: the machine's Redis (port 6379) is never used.
- Each node is ``python -m service serve`` on this interpreter, with a generated config:
  ``broker.kind: redis`` and a ``*`` channel rule that keeps some history, so a client
  that reconnects through the balancer to another node recovers with ``since``.
- HAProxy balances round robin with no stickiness, passes the WebSocket upgrade,
  health-checks every node on ``GET /ready``, and serves its statistics page.

Configs and logs go into a temporary directory. Once every node answers ``/ready`` with
200, HAProxy counts every node UP and the balancer answers, the URLs are printed (with
``--json``, as one JSON line on stdout). On SIGINT or SIGTERM the processes this script
started are stopped by their PIDs, and the directory is removed (unless ``--keep``).
Stopping order: HAProxy stops accepting and lets its sessions finish (SIGUSR1), the
nodes drain their clients (SIGTERM: queued messages, then close 1001, through HAProxy),
then HAProxy and redis-server stop; each gets SIGTERM and then SIGKILL after a bounded
wait. A node that dies meanwhile is reported and the others keep serving; if Redis or
HAProxy dies, the whole cluster is stopped and the exit status is 1.

Exit status: 0 once stopped by a signal, 1 if the cluster failed, 2 for a usage error
(haproxy or redis-server missing, the balancer port taken).
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import FrameType

HOST: Final = "127.0.0.1"
ROOT: Final = Path(__file__).resolve().parent.parent
"""The checkout: nodes run from here, so ``python -m service`` finds its code."""
NODE_COUNT: Final = 3
STARTUP_SECONDS: Final = 30.0
"""How long the processes get to become ready before the start counts as failed."""
NODE_STOP_SECONDS: Final = 15.0
"""A node drains its clients for up to ``shutdown_grace_seconds`` (5 s by default)."""
STOP_SECONDS: Final = 10.0
HAPROXY_SOFT_STOP_SECONDS: Final = 2.0
"""After SIGUSR1 and the nodes' exit, HAProxy's sessions are over: it exits by itself."""
POLL_SECONDS: Final = 0.05
WATCH_SECONDS: Final = 0.5
TUNNEL_TIMEOUT: Final = "60s"
"""An idle WebSocket is closed after this; it must exceed the nodes' 25 s ping interval."""

HAPROXY_HINT: Final = (
    "install it (Debian/Ubuntu: apt-get install haproxy; macOS: brew install haproxy), "
    "or pass --haproxy PATH or set CLARION_HAPROXY"
)
REDIS_HINT: Final = (
    "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis), "
    "or pass --redis-server PATH or set CLARION_REDIS_SERVER"
)

NODE_HINT: Final = (
    f" (nodes run 'python -m service serve' on {sys.executable}: Clarion and its "
    "dependencies must be installed there, e.g. python3 -m venv .venv && "
    ".venv/bin/pip install -e .; deploy/local-cluster uses .venv when it exists)"
)

NODE_CONFIG: Final = """\
# {name} of deploy/local-cluster
server:
  bind: {host}:{port}
broker:
  kind: redis
  url: {redis_url}
  prefix: local
channels:
  - match: "*"
    history: {{size: 100, ttl_seconds: 300}}
"""

HAPROXY_CONFIG: Final = """\
# deploy/local-cluster: round robin over the Clarion nodes, no stickiness; the same
# proxying as deploy/haproxy.cfg (the compose file's), on 127.0.0.1.
global
    log stderr format raw local0 info
    hard-stop-after {stop_seconds}s

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 5s
    timeout http-request 10s
    timeout client 30s
    timeout server 30s
    # After the 101 upgrade a WebSocket is a tunnel: the nodes ping a quiet client every
    # 25 s (server.ping_interval_seconds), so a live one is never idle this long.
    timeout tunnel {tunnel_timeout}
    timeout client-fin 10s
    timeout server-fin 10s

frontend clarion
    bind {host}:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    # A handshake refused by a draining node (503) or a failed connection is tried once
    # more on another node; a publish is never retried (it may have been applied).
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response 503
    http-request disable-l7-retry if METH_POST
    option httpchk
    http-check send meth GET uri /ready ver HTTP/1.1 hdr Host {host}
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2
{servers}

listen stats
    bind {host}:{stats_port}
    http-request set-log-level silent
    stats enable
    stats uri /
    stats refresh 5s
"""


class UsageError(Exception):
    """Raised when the cluster cannot be started as asked (exit status 2)."""


class StartupFailed(Exception):
    """Raised when a process of the cluster exits or is not ready in time (exit status 1)."""


class Stop(Exception):
    """Raised by the SIGINT and SIGTERM handlers: stop the cluster."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


def say(text: str) -> None:
    """Report progress on stderr (stdout carries only the cluster's URLs)."""
    sys.stderr.writelines(f"local-cluster: {line}\n" for line in text.splitlines())
    sys.stderr.flush()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def check_port_free(port: int, option: str) -> None:
    """Raise `UsageError` unless 127.0.0.1:*port* can be listened on."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise UsageError(f"{HOST}:{port} is not free ({exc.strerror}): pick {option}") from None


def find_binary(name: str, given: str | None, env: str, hint: str) -> str:
    """The *name* binary: *given*, else ``$env``, else the PATH, else the sbin folders
    (Debian installs haproxy in /usr/sbin, which a non-root PATH lacks).

    Raises:
        UsageError: if it is missing, with *hint* on how to install it.
    """
    chosen = given or os.environ.get(env)
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise UsageError(f"{name} not found at {chosen!r}: {hint}")
        return found
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise UsageError(f"{name} not found: {hint}")
    return found


def _die_with_parent() -> None:
    # Runs in the child before exec: if this script is killed (SIGKILL, a CI timeout),
    # the kernel kills its children too, instead of leaving them running in their sessions.
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Child:
    """A process of the cluster, its log, and where it listens."""

    name: str
    port: int
    log: Path
    hint: str = ""
    """Said when it exits during the start."""
    process: subprocess.Popen[bytes] | None = None
    reported: bool = False

    def start(self, argv: Sequence[str], cwd: Path | None = None) -> None:
        with self.log.open("ab") as output:
            # A session of its own: a Ctrl-C in the terminal reaches this script only,
            # which then stops the processes in order.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # safe: this script runs no threads
            )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.process.pid

    def exited(self) -> int | None:
        """The exit status, or None while it runs (or was never started)."""
        return None if self.process is None else self.process.poll()

    def describe_exit(self, status: int) -> str:
        if status < 0:
            return f"{self.name} (pid {self.pid}) was killed by {signal.Signals(-status).name}"
        return f"{self.name} (pid {self.pid}) exited with status {status}"

    def check_running(self) -> None:
        status = self.exited()
        if status is not None:
            raise StartupFailed(f"{self.describe_exit(status)}{self.hint}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "".join(f"  | {line}\n" for line in text.splitlines()[-lines:])

    def send(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, seconds: float) -> bool:
        """Wait up to *seconds* for it to exit; return whether it has."""
        if self.process is None:
            return True
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def wait_or_kill(self, seconds: float) -> None:
        """Wait up to *seconds* for it to exit, then SIGKILL it."""
        if not self.wait(seconds) and self.process is not None:
            say(f"{self.name} (pid {self.pid}) did not stop in {seconds:g} s: SIGKILL")
            self.process.kill()
            self.process.wait()

    def stop(self, seconds: float) -> None:
        """SIGTERM, then SIGKILL after *seconds*."""
        self.send(signal.SIGTERM)
        self.wait_or_kill(seconds)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET http://127.0.0.1:*port*/*path*; a connection failure raises `OSError`."""
    # http.client, not urllib: urllib would send loopback requests to an http_proxy.
    connection = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from exc
    finally:
        connection.close()


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as probe:
            probe.sendall(b"PING\r\n")
            return probe.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def node_ready(port: int) -> bool:
    try:
        return http_get(port, "/ready")[0] == 200
    except OSError:
        return False


def servers_up(stats_port: int, names: Sequence[str]) -> bool:
    """Whether HAProxy's statistics show every server of backend ``nodes`` UP."""
    try:
        status, body = http_get(stats_port, "/;csv")
    except OSError:
        return False
    if status != 200:
        return False
    lines = body.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    states = {row["svname"]: row["status"] for row in rows if row.get("pxname") == "nodes"}
    return all(states.get(name) == "UP" for name in names)


class Cluster:
    """The processes of one local cluster; `stop` ends exactly those that were started."""

    def __init__(self, options: argparse.Namespace, workdir: Path, signals: Signals) -> None:
        self.options = options
        self.workdir = workdir
        self.signals = signals
        self.redis_server: str = options.redis_server_path
        self.haproxy: str = options.haproxy_path
        self.redis = Child("redis-server", free_port(), workdir / "redis.log")
        base = options.base_port
        self.nodes = [
            Child(
                f"node{index + 1}",
                free_port() if base is None else base + index,
                workdir / f"node{index + 1}.log",
                hint=NODE_HINT,
            )
            for index in range(NODE_COUNT)
        ]
        self.balancer = Child("haproxy", options.port, workdir / "haproxy.log")
        self.stats_port = free_port()

    @property
    def children(self) -> list[Child]:
        return [self.redis, *self.nodes, self.balancer]

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis.port}/0"

    def start(self) -> None:
        """Start every process and return once the cluster serves through the balancer.

        Raises:
            StartupFailed: if a process exits, or is not ready within STARTUP_SECONDS.
            Stop: on SIGINT or SIGTERM meanwhile (whatever started is stopped by `stop`).
        """
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        argv = [self.redis_server, "--bind", HOST, "--port", str(self.redis.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(redis_dir)]
        with self.signals.deferred():
            self.redis.start(argv)
        self._wait_for(self.redis, lambda: redis_answers(self.redis.port), "to answer PING")
        for node in self.nodes:
            config = self.workdir / f"{node.name}.yaml"
            config.write_text(
                NODE_CONFIG.format(
                    name=node.name, host=HOST, port=node.port, redis_url=self.redis_url
                )
            )
            argv = [sys.executable, "-m", "service", "serve", "--config", str(config)]
            with self.signals.deferred():
                node.start([*argv, "--backend", self.options.backend], cwd=ROOT)
        for node in self.nodes:
            self._wait_for(node, partial(node_ready, node.port), "to answer /ready")
        config = self.workdir / "haproxy.cfg"
        config.write_text(self.haproxy_config())
        checked = subprocess.run(
            [self.haproxy, "-c", "-f", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if checked.returncode != 0:
            raise StartupFailed(f"haproxy refused {config}:\n{checked.stdout}{checked.stderr}")
        with self.signals.deferred():
            self.balancer.start([self.haproxy, "-db", "-f", str(config)])
        names = [node.name for node in self.nodes]
        self._wait_for(
            self.balancer,
            lambda: servers_up(self.stats_port, names) and node_ready(self.balancer.port),
            "to count every node UP and answer /ready",
        )

    def _wait_for(self, child: Child, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not condition():
            child.check_running()
            if time.monotonic() > deadline:
                raise StartupFailed(
                    f"{child.name} did not get {what} in {STARTUP_SECONDS:g} s\n{child.log_tail()}"
                )
            time.sleep(POLL_SECONDS)  # polling a process this script started

    def haproxy_config(self) -> str:
        servers = "\n".join(f"    server {node.name} {HOST}:{node.port}" for node in self.nodes)
        return HAPROXY_CONFIG.format(
            host=HOST,
            port=self.balancer.port,
            stats_port=self.stats_port,
            servers=servers,
            tunnel_timeout=TUNNEL_TIMEOUT,
            stop_seconds=round(NODE_STOP_SECONDS),
        )

    def describe(self) -> dict[str, object]:
        """The cluster's URLs and PIDs, as printed with ``--json``."""
        return {
            "ws_url": f"ws://{HOST}:{self.balancer.port}/ws",
            "http_url": f"http://{HOST}:{self.balancer.port}",
            "port": self.balancer.port,
            "stats_url": f"http://{HOST}:{self.stats_port}/",
            "stats_port": self.stats_port,
            "redis_url": self.redis_url,
            "backend": self.options.backend,
            "nodes": [
                {
                    "name": node.name,
                    "port": node.port,
                    "http_url": f"http://{HOST}:{node.port}",
                    "ws_url": f"ws://{HOST}:{node.port}/ws",
                    "pid": node.pid,
                }
                for node in self.nodes
            ],
            "pids": {child.name: child.pid for child in self.children},
            "workdir": str(self.workdir),
        }

    def watch(self) -> int:
        """Report processes that die; return 1 when Redis or HAProxy did (the cluster
        cannot serve then). Returns only then: a signal ends it by raising `Stop`."""
        while True:
            for child in self.children:
                status = child.exited()
                if status is None or child.reported:
                    continue
                child.reported = True
                say(child.describe_exit(status))
                if child in self.nodes:
                    say("the balancer sends new connections to the other nodes")
                else:
                    return 1
            time.sleep(WATCH_SECONDS)

    def stop(self) -> None:
        """Stop every process this cluster started, by PID, each within a bounded wait."""
        self.balancer.send(signal.SIGUSR1)  # HAProxy: stop accepting, finish the sessions
        for node in self.nodes:
            node.send(signal.SIGTERM)  # drain: queued messages, then close 1001
        for node in self.nodes:
            node.wait_or_kill(NODE_STOP_SECONDS)
        # The nodes closed every WebSocket, so HAProxy ends by itself once it has passed
        # the last close frames on; SIGTERM (an immediate stop) is the fallback.
        self.balancer.wait(HAPROXY_SOFT_STOP_SECONDS)
        self.balancer.stop(STOP_SECONDS)
        self.redis.stop(STOP_SECONDS)


class Signals:
    """SIGINT and SIGTERM raise `Stop`, except inside `deferred` (then at its end)."""

    HANDLED: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferring = False

    def install(self) -> None:
        for signum in self.HANDLED:
            signal.signal(signum, self._handle)

    def ignore(self) -> None:
        """Ignore them from now on: the stop that runs is bounded and must finish."""
        for signum in self.HANDLED:
            signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if not self._deferring:
            raise Stop(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal back until the block ends, so that a process being started is
        recorded (and then stopped) rather than left running."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received is not None:
            raise Stop(self.received)


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="local-cluster",
        description="Run redis-server, three Clarion nodes and HAProxy on 127.0.0.1 "
        "until SIGINT or SIGTERM.",
    )
    parser.add_argument("--port", type=int, default=8080, help="balancer port (default 8080)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--base-port",
        type=int,
        metavar="N",
        help="nodes listen on N, N+1, N+2 (default: free ports)",
    )
    parser.add_argument(
        "--redis-server",
        metavar="PATH",
        help="redis-server binary (default: $CLARION_REDIS_SERVER, else the PATH)",
    )
    parser.add_argument(
        "--haproxy",
        metavar="PATH",
        help="haproxy binary (default: $CLARION_HAPROXY, else the PATH, else /usr/sbin)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the URLs and PIDs as one JSON line"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the directory of configs and logs"
    )
    options = parser.parse_args(argv)
    missing = []
    try:
        options.haproxy_path = find_binary(
            "haproxy", options.haproxy, "CLARION_HAPROXY", HAPROXY_HINT
        )
    except UsageError as exc:
        missing.append(str(exc))
    try:
        options.redis_server_path = find_binary(
            "redis-server", options.redis_server, "CLARION_REDIS_SERVER", REDIS_HINT
        )
    except UsageError as exc:
        missing.append(str(exc))
    if missing:
        raise UsageError("\n".join(missing))
    check_port_free(options.port, "another with --port")
    if options.base_port is not None:
        for port in range(options.base_port, options.base_port + NODE_COUNT):
            check_port_free(port, "another --base-port")
    return options


def report(cluster: Cluster, *, as_json: bool) -> None:
    """Print where the cluster serves: a table, or one JSON line."""
    if as_json:
        text = json.dumps(cluster.describe())
    else:
        rows = [("redis-server", cluster.redis_url, cluster.redis.pid)]
        rows += [(node.name, f"http://{HOST}:{node.port}", node.pid) for node in cluster.nodes]
        rows.append(("haproxy", f"http://{HOST}:{cluster.balancer.port}", cluster.balancer.pid))
        lines = [f"Clarion local cluster on {cluster.options.backend}:"]
        lines += [f"  {name:<13} {url:<30} pid {pid}" for name, url, pid in rows]
        lines.append(f"  {'statistics':<13} http://{HOST}:{cluster.stats_port}/")
        lines.append(f"  {'configs, logs':<13} {cluster.workdir}")
        lines.append(f"Open ws://{HOST}:{cluster.balancer.port}/ws  (Ctrl-C stops the cluster)")
        text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_options(argv)
    except UsageError as exc:
        say(str(exc))
        return 2
    signals = Signals()
    workdir = Path(tempfile.mkdtemp(prefix="clarion-cluster-"))
    cluster = Cluster(options, workdir, signals)
    status = 0
    try:
        signals.install()
        cluster.start()
        report(cluster, as_json=options.json)
        status = cluster.watch()
        say("stopping the cluster")
    except Stop as stop:
        say(f"{stop}: stopping the cluster")
    except StartupFailed as exc:
        say(f"the cluster did not start: {exc}")
        status = 1
    finally:
        signals.ignore()
        cluster.stop()
        if options.keep:
            say(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say("stopped")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
