"""The listening sockets ``clarion serve`` binds first, and its one-line bind errors."""

from __future__ import annotations

import errno
import socket
import struct
from contextlib import ExitStack
from pathlib import Path

import pytest

from service.runner import hypercorn_config
from service.settings import ServerSettings, Settings
from service.sockets import BindError, bind_sockets

SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())


def accept_queue_bound(sock: socket.socket) -> int:
    """The backlog the kernel applies to a listening socket.

    For a listening socket, Linux's ``tcp_info`` carries the accept queue's length in
    ``tcpi_unacked`` and its bound in ``tcpi_sacked`` (offsets 24 and 28).
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    bound: int = struct.unpack_from("=I", info, 28)[0]
    return bound


@pytest.mark.parametrize("backlog", [None, 200, 65535], ids=["default", "200", "above-somaxconn"])
def test_bind_sockets_listens_with_the_configured_backlog(
    free_tcp_port: int, backlog: int | None
) -> None:
    server = ServerSettings(bind=f"127.0.0.1:{free_tcp_port}")
    if backlog is not None:
        server = ServerSettings(bind=server.bind, listen_backlog=backlog)
    expected = 4096 if backlog is None else backlog
    sockets = bind_sockets(hypercorn_config(Settings(server=server)))
    with ExitStack() as stack:
        for sock in sockets.insecure_sockets:
            stack.enter_context(sock)
        assert sockets.secure_sockets == []
        (listener,) = sockets.insecure_sockets
        assert listener.getsockname() == ("127.0.0.1", free_tcp_port)
        assert accept_queue_bound(listener) == min(expected, SOMAXCONN)  # Linux caps it
        with socket.create_connection(("127.0.0.1", free_tcp_port), timeout=5):
            pass  # the kernel accepts for the server from now on


def bind_error(bind: tuple[str, int]) -> OSError:
    """The error of a real bind to *bind*."""
    with socket.socket() as sock:
        try:
            sock.bind(bind)
        except OSError as exc:
            return exc
    raise AssertionError(f"{bind} could be bound")


def test_a_taken_port_is_named_as_such(free_tcp_port: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_tcp_port))
        holder.listen()
        cause = bind_error(("127.0.0.1", free_tcp_port))
    error = BindError(f"127.0.0.1:{free_tcp_port}", cause)
    assert str(error) == (
        f"cannot listen on 127.0.0.1:{free_tcp_port}: the address is already in use "
        "(another process listens on that port)"
    )
    assert (error.bind, error.cause) == (f"127.0.0.1:{free_tcp_port}", cause)


def test_an_address_of_another_machine_is_named_as_such() -> None:
    cause = bind_error(("192.0.2.1", 8000))  # TEST-NET-1: bound (which fails), never used
    assert cause.errno == errno.EADDRNOTAVAIL
    error = BindError("192.0.2.1:8000", cause)
    assert (
        str(error) == "cannot listen on 192.0.2.1:8000: 192.0.2.1 is not an address of this machine"
    )


def test_a_host_name_that_does_not_resolve_is_named_as_such() -> None:
    cause = bind_error(("nonexistent.invalid", 8000))
    assert isinstance(cause, socket.gaierror)
    assert str(BindError("nonexistent.invalid:8000", cause)) == (
        "cannot listen on nonexistent.invalid:8000: the host name 'nonexistent.invalid' "
        f"does not resolve ({cause.strerror})"
    )


@pytest.mark.parametrize(
    ("bind", "cause", "reason"),
    [
        ("127.0.0.1:8000", PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
        ("127.0.0.1:80", OSError(errno.EMFILE, "Too many open files"), "Too many open files"),
        ("a:1, b:2", OSError(errno.EADDRINUSE, "Address already in use"), "the address is"),
    ],
    ids=["denied-above-1024", "other-error", "several-binds"],
)
def test_other_causes_keep_the_systems_words(bind: str, cause: OSError, reason: str) -> None:
    assert str(BindError(bind, cause)).startswith(f"cannot listen on {bind}: {reason}")
