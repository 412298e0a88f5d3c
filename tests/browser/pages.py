"""Pages for the browser tests, served from an origin of their own (not Clarion's).

`serve_files` is a tiny HTTP/1.1 server on 127.0.0.1 for a few fixed files, run in the
test's task group; `client_page` is a page that imports Clarion's ``client.js``, as an
application's page on another site would.
"""

from __future__ import annotations

import importlib.resources
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio
from anyio.abc import SocketAttribute

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from anyio.abc import SocketStream

__all__ = ("HTML", "JAVASCRIPT", "client_js", "client_page", "serve_files", "serve_page")

HTML: Final = "text/html; charset=utf-8"
JAVASCRIPT: Final = "text/javascript; charset=utf-8"
#: A request head larger than this is not for us.
MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
#: How long a browser may take to send its request.
REQUEST_SECONDS: Final = 5.0


def client_page(client_url: str) -> str:
    """A page that imports *client_url* as ``window.clarion`` (the module's exports), or
    sets ``window.importError`` if the import fails."""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Clarion client test page</title></head>
<body>
<p>A page of another origin, using Clarion's client.js.</p>
<script type="module">
  try {{
    window.clarion = await import({client_url!r});
  }} catch (error) {{
    window.importError = String(error);
  }}
</script>
</body>
</html>
"""


def client_js() -> bytes:
    """The ``client.js`` that Clarion serves."""
    return (importlib.resources.files("service") / "static" / "client.js").read_bytes()


@asynccontextmanager
async def serve_page(html: str) -> AsyncIterator[str]:
    """Serve *html* at ``http://127.0.0.1:PORT/`` for the block; yield that URL."""
    async with serve_files({"/": (HTML, html.encode())}) as url:
        yield url


@asynccontextmanager
async def serve_files(files: Mapping[str, tuple[str, bytes]]) -> AsyncIterator[str]:
    """Serve *files* (path: content type and body; any other path is a 404) on
    ``http://127.0.0.1:PORT/`` for the duration of the block; yield that URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)

    async def answer(stream: SocketStream) -> None:
        async with stream:
            head = b""
            with anyio.move_on_after(REQUEST_SECONDS):
                while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_HEAD_BYTES:
                    try:
                        head += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].decode(errors="replace")
            found = files.get(path) if method == b"GET" else None
            status, (content_type, body) = (
                ("200 OK", found) if found is not None else ("404 Not Found", ("text/plain", b""))
            )
            response = (
                f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\ncache-control: no-store\r\n"
                "connection: close\r\n\r\n"
            ).encode() + body
            try:
                await stream.send(response)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the browser gave up on this request

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            tg.cancel_scope.cancel()
