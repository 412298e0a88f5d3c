"""pusher-js, the real library from npm, driven in Node (``tests/node/pusher_driver.cjs``),
and an app backend's authorization endpoint written with the real ``pusher`` library.

The npm packages are installed as ``tests/node/package-lock.json`` locks them (``npm ci``,
which ``.ci/run`` runs too) the first time a test needs them; without Node.js and npm
such a test fails, it never skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.support.server import wait_listening

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import pusher
    from anyio.abc import Process

    from service.types import Receive, Scope, Send

__all__ = (
    "NODE_FOLDER",
    "PusherJS",
    "WebhookReceiver",
    "auth_app",
    "install_node_packages",
    "open_pusherjs",
    "serving",
)

NODE_FOLDER = Path(__file__).resolve().parent.parent / "node"
_installing = threading.Lock()

Report = dict[str, Any]


class PusherJS:
    """pusher-js clients in one Node process: send commands, wait for reports."""

    def __init__(self, process: Process, stdout: BufferedByteReceiveStream) -> None:
        self._process = process
        self._stdout = stdout
        self.reports: list[Report] = []
        """Every report so far, in order."""

    async def send(self, **command: Any) -> None:
        """Send one command (see the driver's header)."""
        if self._process.stdin is None:
            raise RuntimeError("the driver has no stdin")
        await self._process.stdin.send(json.dumps(command).encode() + b"\n")

    async def expect(self, match: Callable[[Report], bool], *, seconds: float = 10) -> Report:
        """Wait for the next report that *match* accepts (the ones before stay in
        `reports`)."""
        with anyio.fail_after(seconds):
            while True:
                line = await self._stdout.receive_until(b"\n", 1 << 20)
                report: Report = json.loads(line)
                self.reports.append(report)
                if "failed" in report:
                    raise AssertionError(f"the driver failed: {report['failed']}")
                if match(report):
                    return report

    async def connected(self, name: str, *, seconds: float = 10) -> str:
        """Wait until client *name* is connected; return its socket id."""
        report = await self.expect(
            lambda r: r.get("as") == name and str(r.get("state", "")).endswith("-> connected"),
            seconds=seconds,
        )
        return str(report["socket_id"])

    async def event(self, name: str, channel: str, event: str, *, seconds: float = 10) -> Report:
        """Wait for *event* on *channel* at client *name*."""
        return await self.expect(
            lambda r: (
                r.get("as") == name and r.get("channel") == channel and r.get("event") == event
            ),
            seconds=seconds,
        )

    def seen(self, name: str, channel: str, event: str) -> list[Report]:
        """The reports of *event* on *channel* at client *name* so far."""
        return [
            r
            for r in self.reports
            if r.get("as") == name and r.get("channel") == channel and r.get("event") == event
        ]


@asynccontextmanager
async def open_pusherjs() -> AsyncIterator[PusherJS]:
    """Start the driver in Node; stop it (and every client in it) on leaving."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed: the Pusher door's tests run pusher-js")
    await anyio.to_thread.run_sync(install_node_packages)
    async with await anyio.open_process(
        [node, str(NODE_FOLDER / "pusher_driver.cjs")], cwd=NODE_FOLDER
    ) as process:
        if process.stdout is None:
            raise RuntimeError("the driver has no stdout")
        driver = PusherJS(process, BufferedByteReceiveStream(process.stdout))
        try:
            await driver.expect(lambda r: r.get("ready") is True)
            yield driver
        finally:
            with anyio.move_on_after(5, shield=True):
                await driver.send(op="exit")
                await process.wait()
            if process.returncode is None:
                process.kill()


def install_node_packages() -> None:
    """Install the locked npm packages into ``tests/node`` unless they are there."""
    with _installing:
        if (NODE_FOLDER / "node_modules" / "laravel-echo").is_dir():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise AssertionError("npm is not installed: the Pusher door's tests need it")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_FOLDER,
            check=True,
            timeout=300,
        )


def auth_app(
    client: pusher.Pusher,
    users: dict[str, dict[str, Any]],
    files: dict[str, tuple[str, bytes]] | None = None,
) -> Any:
    """An app backend's authorization endpoints, as the Pusher docs write them with the
    ``pusher`` library: ``POST /auth`` (channels; a presence channel's member is
    ``users[socket_id]``, or a user named after the socket) and ``POST /user-auth``
    (sign-in, as ``users[socket_id]``); and ``GET`` of *files* (path: content type and
    body), the app's pages."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["method"] == "GET":
            found = (files or {}).get(scope["path"])
            status, content_type, page = (200, *found) if found else (404, "text/plain", b"")
            headers = [(b"content-type", content_type.encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": page})
            return
        body = await _body(receive)
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        socket_id = form.get("socket_id", "")
        user = users.get(socket_id, {"id": f"user-{socket_id[-4:]}", "user_info": {}})
        if scope["path"] == "/auth":
            channel = form.get("channel_name", "")
            if channel.startswith("presence-"):
                member = {"user_id": user["id"], "user_info": user.get("user_info", {})}
                answer = client.authenticate(channel, socket_id, member)
            else:
                answer = client.authenticate(channel, socket_id)
        else:
            answer = client.authenticate_user(socket_id, {"id": user["id"]})
        if isinstance(answer.get("shared_secret"), bytes):  # the library's, for encryption
            answer["shared_secret"] = answer["shared_secret"].decode()
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


@asynccontextmanager
async def serving(app: Any, backend: str, port: int) -> AsyncIterator[str]:
    """Serve the ASGI *app* under hypercorn's *backend* worker on 127.0.0.1:*port*; yield
    its base URL."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.errorlog = None
    stop = anyio.Event()
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment] # same signature
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, app, config, shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            await wait_listening(port)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()


class WebhookReceiver:
    """An app backend's webhook endpoint, as the Pusher docs write it: every request is
    checked with the ``pusher`` library's ``validate_webhook``; the events of the valid
    ones are kept, the others counted."""

    def __init__(self, client: pusher.Pusher) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.invalid = 0
        self.arrived = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body = await _body(receive)
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        valid = self.client.validate_webhook(
            headers.get("x-pusher-key", ""), headers.get("x-pusher-signature", ""), body.decode()
        )
        if valid is None:
            self.invalid += 1
        else:
            self.events += valid["events"]
            self.arrived.set()
            self.arrived = anyio.Event()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait for an event that *match* accepts."""
        while True:
            for event in self.events:
                if match(event):
                    return event
            await self.arrived.wait()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"].removeprefix("lifespan.")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def _body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body
