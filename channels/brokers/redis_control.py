"""The server API's commands through Redis: one pub/sub channel to every node, and the
bans kept in a hash (`channels.brokers.redis_keys`).

A command is published on ``P:control``; every node subscribed to it (the sender's
included) hands it to its hub. A ban is also written to ``P:bans`` (a lifted one taken
out), and ``P:bans:v`` gets a new random token, so a node that starts, or reconnects
after missing some, reads them again when the token changed, or vanished with a Redis
that restarted: pub/sub delivers at most once, the hash does not forget (unless Redis
loses its data).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from channels.brokers import redis_scripts
from channels.control import Command, Disconnect

if TYPE_CHECKING:
    import coredis
    import coredis.patterns.pubsub

    from channels.brokers import Receiver
    from channels.brokers.redis_keys import Keys

__all__ = ("ControlChannel",)

logger = logging.getLogger("clarion")

_encoder = msgspec.json.Encoder()
#: The close code of the server API's disconnect (`service.closecodes`).
_DISCONNECTED = 4003
_command = msgspec.json.Decoder(Command)
_ban = msgspec.json.Decoder(Disconnect)


class ControlChannel:
    """Sends the server API's commands to every node, and receives them for this one."""

    def __init__(
        self, client: coredis.Redis[bytes], keys: Keys, receiver: Receiver, timeout: float
    ) -> None:
        self._client = client
        self._keys = keys
        self._receiver = receiver
        self._timeout = timeout
        self._subscribed = False
        self._bans_version: bytes | None = None
        self._banned: set[str] = set()
        """The users this node knows banned: a user missing from the bans when they are
        read again had the ban lifted while this node was not listening."""
        self._forget = client.register_script(redis_scripts.FORGET_BANS)

    async def send(self, command: Command) -> None:
        """Publish *command* to every node; keep it first if it is a ban (or forget the
        user's ban, for one whose ``until`` has passed).

        Raises:
            As a Redis call (`channels.brokers.redis_health.UNAVAILABLE`), or TimeoutError.
        """
        payload = _encoder.encode(command)
        with anyio.fail_after(self._timeout):
            async with self._client.pipeline(transaction=True) as pipeline:
                if isinstance(command, Disconnect) and command.until is not None:
                    if command.until > time.time():
                        pipeline.hset(self._keys.bans, {command.user: payload})
                    else:
                        pipeline.hdel(self._keys.bans, [command.user])
                    # A new token rather than a counter: a Redis restarted without its
                    # data starts no counter again at a value the nodes have seen.
                    pipeline.set(self._keys.bans_version, secrets.token_hex(8))
                pipeline.publish(self._keys.control, payload)

    def receive(self, payload: bytes) -> None:
        """Hand a command that came through pub/sub to this node's hub."""
        try:
            command = _command.decode(payload)
        except msgspec.MsgspecError:
            logger.warning("ignored a malformed command on %r", self._keys.control)
            return
        if isinstance(command, Disconnect) and command.until is not None:
            if command.until > time.time():
                self._banned.add(command.user)
            else:
                self._banned.discard(command.user)
        self._receiver.command(command)

    async def catch_up(self, pubsub: coredis.patterns.pubsub.PubSub[bytes]) -> None:
        """Subscribe to the commands (once: pub/sub resubscribes after), and apply the
        bans again when they changed since this node last read them (or Redis lost them).

        Raises:
            As a Redis call, or TimeoutError.
        """
        with anyio.fail_after(self._timeout):
            if not self._subscribed:
                await pubsub.subscribe(self._keys.control)
                self._subscribed = True
            version = await self._client.get(self._keys.bans_version)
            if version is not None and version == self._bans_version:
                return
            bans: dict[Any, bytes] = await self._client.hgetall(self._keys.bans)
            now = time.time()
            expired: list[bytes] = []
            banned: set[str] = set()
            for user, payload in bans.items():
                try:
                    ban = _ban.decode(payload)
                except msgspec.MsgspecError:
                    logger.warning("ignored a malformed ban in %r", self._keys.bans)
                    continue
                if ban.until is None or ban.until <= now:
                    expired += (user, payload)
                else:
                    banned.add(ban.user)
                    self._receiver.command(ban)
            for user in self._banned - banned:  # lifted meanwhile: lift it here too
                # (It closes nothing: the user had no connection on a node keeping it out.)
                lifted = Disconnect(user=user, code=_DISCONNECTED, reason="ban lifted", until=0.0)
                self._receiver.command(lifted)
            self._banned = banned
            if expired:
                await self._forget(keys=[self._keys.bans], args=expired)
            self._bans_version = version
