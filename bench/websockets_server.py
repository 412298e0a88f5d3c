"""A reference that is not an ASGI server: the ``websockets`` library's own server.

It speaks just enough of Clarion's protocol for ``clarion bench``, and fans each message
out with ``websockets.broadcast()``, which writes one pre-encoded frame to every
connection's transport without waiting: the fastest fan-out a pure-Python asyncio
server gets, and a check that the generator is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve

SUBSCRIBERS: set[ServerConnection] = set()
OFFSET = 0


def publish(request: dict[str, Any]) -> int:
    global OFFSET
    OFFSET += 1
    message = {
        "type": "message",
        "channel": request["channel"],
        "offset": OFFSET,
        "data": request["data"],
    }
    broadcast(SUBSCRIBERS, json.dumps(message, separators=(",", ":")))
    return OFFSET


async def http_publisher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            request = json.loads(await reader.readexactly(length))
            offset = publish(request)
            body = json.dumps({"type": "reply", "channel": request["channel"], "offset": offset})
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body.encode())
            )
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def handler(connection: ServerConnection) -> None:
    try:
        async for raw in connection:
            request = json.loads(raw)
            if request["type"] == "subscribe":
                SUBSCRIBERS.add(connection)
                reply = {"type": "reply", "id": request.get("id"), "channel": request["channel"]}
                await connection.send(json.dumps({**reply, "offset": OFFSET}))
            elif request["type"] == "publish":
                publish(request)
    except Exception:  # the bench drops connections without a close frame
        pass
    finally:
        SUBSCRIBERS.discard(connection)


async def main(port: int, http_port: int | None) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        if http_port is None:
            await stop
            return
        http = await asyncio.start_server(http_publisher, "127.0.0.1", http_port)
        async with http:
            await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, help="serve POST /api/publish here")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.port, arguments.http_port))
