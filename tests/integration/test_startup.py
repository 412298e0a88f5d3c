"""``clarion serve`` that cannot have its address: one line on stderr, exit status 2.

Each test runs the real command; none of them gets as far as serving, so the line on
stderr is all it says (no traceback, no ``serving ws://...`` logged before the bind).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from tests.integration.test_commands import BIN

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from channels.config import BrokerConfig
    from service.runner import Backend

#: The first port that needs no privilege (Linux; 1024 unless the machine changed it).
FIRST_UNPRIVILEGED_PORT = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
IN_USE = "the address is already in use (another process listens on that port)"

#: Runs ``argv[1:]`` without the capability to bind ports below 1024 (a root process
#: keeps its user, and so can still read the interpreter; CAP_NET_BIND_SERVICE leaves the
#: bounding set, so the program it executes does not have it).
WITHOUT_BIND_PRIVILEGE = """
import ctypes, os, sys
PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE = 24, 10
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE)")
os.execv(sys.argv[1], sys.argv[1:])
"""


async def failed_start(argv: Sequence[str], prefix: Sequence[str] = ()) -> str:
    """Run ``clarion serve *argv*``, which must exit with status 2; return its stderr."""
    with anyio.fail_after(30):
        result = await anyio.run_process(
            [*prefix, str(BIN / "clarion"), "serve", *argv], check=False
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert result.stdout == b""
    return stderr


@pytest.fixture
def taken_port(free_tcp_port: int) -> Iterator[int]:
    """A port another socket listens on, on 127.0.0.1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_tcp_port))
        holder.listen()
        yield free_tcp_port


def config_file(path: Path, server: dict[str, object], broker: BrokerConfig | None = None) -> str:
    document: dict[str, object] = {"server": server}
    if broker is not None:
        document["broker"] = msgspec.to_builtins(broker)
    path.write_bytes(msgspec.yaml.encode(document))
    return str(path)


async def test_a_port_in_use_given_by_bind_is_one_line(
    anyio_backend: Backend, taken_port: int
) -> None:
    bind = f"127.0.0.1:{taken_port}"
    stderr = await failed_start(["--bind", bind, "--backend", anyio_backend])
    assert stderr == f"clarion: error: --bind: cannot listen on {bind}: {IN_USE}\n"


async def test_a_port_in_use_given_by_the_file_names_server_bind(
    anyio_backend: Backend, taken_port: int, tmp_path: Path
) -> None:
    bind = f"127.0.0.1:{taken_port}"
    config = config_file(tmp_path / "channels.yaml", {"bind": bind})
    stderr = await failed_start(["--config", config, "--backend", anyio_backend])
    assert stderr == f"clarion: error: server.bind: cannot listen on {bind}: {IN_USE}\n"


async def test_a_port_in_use_with_workers_starts_none(
    anyio_backend: Backend, taken_port: int, tmp_path: Path, redis_broker: BrokerConfig
) -> None:
    bind = f"127.0.0.1:{taken_port}"
    config = config_file(tmp_path / "nodes.yaml", {"bind": bind}, redis_broker)
    argv = ["--config", config, "--workers", "2", "--backend", anyio_backend]
    stderr = await failed_start(argv)
    assert stderr == f"clarion: error: server.bind: cannot listen on {bind}: {IN_USE}\n"


@pytest.mark.parametrize(
    ("bind", "reason"),
    [
        # TEST-NET-1 (RFC 5737): never an address of this machine; only bound, never used.
        ("192.0.2.1:8000", "192.0.2.1 is not an address of this machine"),
        ("[2001:db8::1]:8000", "2001:db8::1 is not an address of this machine"),
        # .invalid never resolves (RFC 2606); the resolver's words vary (no DNS at all
        # says "Temporary failure in name resolution"), so they are not compared.
        ("nonexistent.invalid:8000", "the host name 'nonexistent.invalid' does not resolve ("),
    ],
    ids=["not-local", "not-local-v6", "unresolvable"],
)
async def test_an_address_that_is_not_this_machines_is_one_line(
    anyio_backend: Backend, bind: str, reason: str
) -> None:
    stderr = await failed_start(["--bind", bind, "--backend", anyio_backend])
    assert stderr.startswith(f"clarion: error: --bind: cannot listen on {bind}: {reason}")
    assert stderr.count("\n") == 1


async def test_a_privileged_port_without_the_privilege_is_one_line(
    anyio_backend: Backend,
) -> None:
    assert FIRST_UNPRIVILEGED_PORT > 1, (
        "this test needs port 1 to be privileged: net.ipv4.ip_unprivileged_port_start is "
        f"{FIRST_UNPRIVILEGED_PORT}"
    )
    prefix = [sys.executable, "-c", WITHOUT_BIND_PRIVILEGE] if os.geteuid() == 0 else []
    stderr = await failed_start(["--bind", "127.0.0.1:1", "--backend", anyio_backend], prefix)
    assert stderr == (
        "clarion: error: --bind: cannot listen on 127.0.0.1:1: permission denied (ports "
        "below 1024 need root or the CAP_NET_BIND_SERVICE capability)\n"
    )
