"""The floor: an ASGI app that accepts WebSockets, answers each request, and waits.

What hypercorn itself costs per connection; ``clarion bench idle`` against it gives the
baseline that Clarion's own footprint is measured above.
"""

from __future__ import annotations

from typing import Any

REPLY = '{"type":"reply","channel":"idle","offset":0,"epoch":"floor"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": REPLY})
