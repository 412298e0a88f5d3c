"""The server under test: started as a pinned child process, or an existing one by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path
    from types import FrameType

__all__ = (
    "ProcessStats",
    "RedisServer",
    "ServerProcess",
    "exit_on_sigterm",
    "find_redis_server",
    "free_port",
    "pin",
    "wait_serving",
)

_TICKS = os.sysconf("SC_CLK_TCK")
#: The lines of a server's log shown when it does not start.
_LOG_LINES = 10


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pin(pid: int, core: int | None) -> None:
    """Run *pid* (0: this process) on *core* only, when the machine has it."""
    if core is not None and hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {core})


def wait_serving(
    port: int,
    seconds: float = 20.0,
    answer: bytes = b"HTTP/1.1 200 ",
    exited: Callable[[], int | None] = lambda: None,
) -> None:
    """Block until the Clarion server on 127.0.0.1:*port* answers ``GET /health``
    (with a response that starts with *answer*: any, for another server).

    A listening port is not enough: ``clarion serve`` binds it before its app starts.

    Raises:
        TimeoutError: if it does not within *seconds*, or *exited* says (with a status)
            that its process is gone.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
                probe.sendall(
                    b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
                )
                if probe.recv(64).startswith(answer):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or exited() is not None:
            raise TimeoutError(f"no Clarion server answers on 127.0.0.1:{port}") from None
        time.sleep(0.05)


class ProcessStats:
    """CPU time and resident memory of a process, read from ``/proc`` (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `SystemExit` meanwhile, so that the servers a run started are
    stopped (by their ``finally``) when the run itself is stopped."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ServerProcess:
    """A server started for a run, pinned to one core; stopped with SIGTERM."""

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        core: int | None,
        log: Path,
        env: dict[str, str] | None = None,
        ready: bytes = b"HTTP/1.1 200 ",
    ) -> None:
        self.port = port
        environment = None if env is None else {**os.environ, **env}
        with log.open("wb") as output:
            self._process = subprocess.Popen(
                argv, stdout=output, stderr=subprocess.STDOUT, env=environment
            )
        pin(self._process.pid, core)
        self.stats = ProcessStats(self._process.pid)
        try:
            wait_serving(port, answer=ready, exited=self._process.poll)
        except TimeoutError as exc:
            exited = self._process.poll()
            self.stop()
            # What the server said is why, most often (a configuration it refused).
            said = log.read_text(errors="replace").strip().splitlines()[-_LOG_LINES:]
            ended = "it ran on" if exited is None else f"it exited with {exited}"
            raise RuntimeError(
                f"{exc}; {ended}, and its last words were:\n" + "\n".join(said)
            ) from None

    @classmethod
    def clarion(
        cls,
        backend: str,
        core: int | None,
        log: Path,
        config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        """Start ``clarion serve`` on a free port with *backend* (and *env* added to its
        environment)."""
        port = free_port()
        argv = [sys.executable, "-m", "service", "serve", "--backend", backend]
        argv += ["--bind", f"127.0.0.1:{port}"]
        if config is not None:
            argv += ["--config", str(config)]
        return cls(argv, port, core, log, env)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 and a free port, keeping nothing on disk.

    `stop` it (by its PID) and `start` it again on the same port to test outages.
    """

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 10 seconds")
            time.sleep(0.02)  # a sync fixture polling a process it started

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def find_redis_server() -> str | None:
    """The ``redis-server`` binary: ``CLARION_REDIS_SERVER``, or the one on the PATH."""
    return os.environ.get("CLARION_REDIS_SERVER") or shutil.which("redis-server")
