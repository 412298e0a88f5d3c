"""The listening sockets, bound before the server starts, and why binding them failed.

``clarion serve`` binds its address before anything is served or logged as served, so
that an address it cannot have ends the command with one line that says why, instead of
a traceback from inside the worker.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Final

from service.settings import parse_bind

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets

__all__ = ("BindError", "PRIVILEGED_PORTS_BELOW", "bind_sockets")

#: Ports below this need privileges on Linux (``net.ipv4.ip_unprivileged_port_start``).
PRIVILEGED_PORTS_BELOW: Final = 1024


class BindError(Exception):
    """Raised when the server cannot listen on its address.

    The message is one line that names the address and the cause: the port is taken,
    the port needs privileges, the host is not an address of this machine, or its name
    does not resolve.

    Attributes:
        bind: the ``HOST:PORT`` that could not be bound.
        cause: the error of the bind (`socket.gaierror` for a name that does not resolve).
    """

    def __init__(self, bind: str, cause: OSError) -> None:
        super().__init__(f"cannot listen on {bind}: {_reason(bind, cause)}")
        self.bind = bind
        self.cause = cause


def _reason(bind: str, cause: OSError) -> str:
    try:
        host, port = parse_bind(bind)
    except ValueError:  # several addresses, or hypercorn's unix: and fd:// forms
        host, port = bind, None
    if isinstance(cause, socket.gaierror):
        return f"the host name {host!r} does not resolve ({cause.strerror})"
    if cause.errno == errno.EADDRINUSE:
        return "the address is already in use (another process listens on that port)"
    if cause.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if cause.errno == errno.EACCES and port is not None and port < PRIVILEGED_PORTS_BELOW:
        return (
            f"permission denied (ports below {PRIVILEGED_PORTS_BELOW} need root "
            "or the CAP_NET_BIND_SERVICE capability)"
        )
    return cause.strerror or str(cause)


def bind_sockets(settings: Config) -> Sockets:
    """Bind and listen on *settings*' addresses, with its ``backlog``.

    The sockets are listening when this returns, as hypercorn's trio worker needs them
    to be (its asyncio worker calls ``listen`` again, with the same backlog); pass them
    to `service.runner.run` or `service.runner.run_workers`, which own them from then on.

    Raises:
        BindError: if an address cannot be bound or listened on.
    """
    try:
        sockets = settings.create_sockets()
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            sock.listen(settings.backlog)
    except OSError as exc:
        # hypercorn binds its addresses in turn without saying which one failed; Clarion
        # gives it one, server.bind.
        raise BindError(", ".join(settings.bind), exc) from exc
    return sockets
