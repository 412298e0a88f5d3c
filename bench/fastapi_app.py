"""The usual pattern: FastAPI's documented ``ConnectionManager``, broadcasting in a loop.

From https://fastapi.tiangolo.com/advanced/websockets/ ("Handling disconnections and
multiple clients"), speaking just enough of Clarion's protocol for ``clarion bench``:
a subscribe gets a reply, a publish (over the WebSocket, or ``POST /api/publish`` as a
backend sends it) is broadcast to every connection as a ``message`` with a counting
offset, encoded once.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []
        self.offset = 0

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()

    def disconnect(self, websocket: WebSocket) -> None:
        if websocket in self.active_connections:
            self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        for connection in list(self.active_connections):
            await connection.send_text(message)


manager = ConnectionManager()


async def publish(request: dict[str, Any]) -> dict[str, Any]:
    manager.offset += 1
    message = {
        "type": "message",
        "channel": request["channel"],
        "offset": manager.offset,
        "data": request["data"],
    }
    await manager.broadcast(json.dumps(message, separators=(",", ":")))
    return {"type": "reply", "channel": request["channel"], "offset": manager.offset}


@app.post("/api/publish")
async def publish_endpoint(request: dict[str, Any]) -> dict[str, Any]:
    return await publish(request)


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    try:
        while True:
            request = json.loads(await websocket.receive_text())
            if request["type"] == "subscribe":
                manager.active_connections.append(websocket)
                reply = {"type": "reply", "id": request.get("id"), "channel": request["channel"]}
                await websocket.send_text(json.dumps({**reply, "offset": manager.offset}))
            elif request["type"] == "publish":
                await publish(request)
    except WebSocketDisconnect:
        manager.disconnect(websocket)
