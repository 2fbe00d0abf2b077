"""A bare Starlette WebSocket relay: the ceiling of the edge's web stack.

    python -m chatmesh.benchmarks.relay --port 8300

It speaks the frames the benchmark uses (auth, send, group create, ping)
with no validation, storage or broker. A send gets `accepted` and
`committed` at once and is forwarded in memory to the recipients' sockets.
The token of the auth frame is taken as the user name. It runs on uvicorn
with the edge's settings, so the benchmark's ratio of chatmesh to this relay
is what chatmesh's own logic costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from edge.server import WS_MAX_FRAME_BYTES


class Relay:
    """Connected users and groups of one relay process, in memory."""

    def __init__(self) -> None:
        self.sockets: dict[str, WebSocket] = {}
        self.groups: dict[str, list[str]] = {}
        self.seq = 0

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        auth = json.loads(await ws.receive_text())
        user = str(auth.get("token", ""))
        self.sockets[user] = ws
        hello = {"type": "hello", "user": user, "region": "relay", "edge": "relay"}
        await ws.send_text(json.dumps(hello))
        try:
            while True:
                await self._on_frame(ws, user, json.loads(await ws.receive_text()))
        except WebSocketDisconnect:
            pass
        finally:
            self.sockets.pop(user, None)

    async def _on_frame(self, ws: WebSocket, user: str, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "send":
            await self._relay(ws, user, frame)
        elif kind == "group":
            self.groups[frame["group"]] = [user, *frame.get("members", [])]
            reply = {"type": "group", "ref": frame["id"], "group": frame["group"]}
            await ws.send_text(json.dumps(reply))
        elif kind == "ping":
            await ws.send_text('{"type": "pong"}')

    async def _relay(self, ws: WebSocket, user: str, frame: dict[str, Any]) -> None:
        ref = frame["id"]
        await ws.send_text(json.dumps({"type": "accepted", "id": ref}))
        group = frame.get("group")
        recipients = self.groups.get(group, []) if group else [frame.get("to", "")]
        self.seq += 1
        message = {
            "type": "message",
            "message": {
                "message_id": str(self.seq),
                "conversation": group or "dm",
                "seq": self.seq,
                "sender": user,
                "content": frame["content"],
                "timestamp_ms": time.time_ns() // 1_000_000,
                "client_msg_id": ref,
            },
        }
        text = json.dumps(message)
        for recipient in recipients:
            target = self.sockets.get(recipient)
            if recipient != user and target is not None:
                await target.send_text(text)
        await ws.send_text(json.dumps({"type": "committed", "id": ref}))


def create_app() -> Starlette:
    relay = Relay()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "connections": len(relay.sockets)})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            WebSocketRoute("/v1/ws", relay.serve),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatmesh.benchmarks.relay")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="TCP port")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ws_max_size=WS_MAX_FRAME_BYTES,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
