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

from websockets.asyncio.server import ServerConnection, broadcast, serve

SUBSCRIBERS: set[ServerConnection] = set()
OFFSET = 0


async def handler(connection: ServerConnection) -> None:
    global OFFSET
    try:
        async for raw in connection:
            request = json.loads(raw)
            if request["type"] == "subscribe":
                SUBSCRIBERS.add(connection)
                reply = {"type": "reply", "id": request.get("id"), "channel": request["channel"]}
                await connection.send(json.dumps({**reply, "offset": OFFSET}))
            elif request["type"] == "publish":
                OFFSET += 1
                message = {
                    "type": "message",
                    "channel": request["channel"],
                    "offset": OFFSET,
                    "data": request["data"],
                }
                broadcast(SUBSCRIBERS, json.dumps(message, separators=(",", ":")))
    except Exception:  # the bench drops connections without a close frame
        pass
    finally:
        SUBSCRIBERS.discard(connection)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
