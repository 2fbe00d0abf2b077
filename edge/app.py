"""The edge's Starlette application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from core.schema import PROTOCOL_VERSION, USER_PATTERN
from edge.runtime import EdgeIdentity, EdgeRuntime
from edge.websocket import serve_websocket


def create_app(identity: EdgeIdentity) -> Starlette:
    """Build the edge app; its lifespan starts and stops the edge runtime."""
    runtime = EdgeRuntime(identity)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    async def healthz(request: Request) -> JSONResponse:
        status = 200 if runtime.ready else 503
        body = {
            "status": "ok" if runtime.ready else "starting",
            "region": identity.region.name,
            "edge": identity.edge.name,
            "mesh": identity.topology.name,
            "protocol": PROTOCOL_VERSION,
            "connections": runtime.sessions.count(),
        }
        return JSONResponse(body, status_code=status)

    async def route(request: Request) -> JSONResponse:
        import re

        user = request.query_params.get("user", "")
        if re.fullmatch(USER_PATTERN, user) is None:
            return JSONResponse(
                {"code": "bad_request", "message": f"invalid user name {user!r}"}, 400
            )
        owner = identity.owner_of(user)
        return JSONResponse(
            {"user": user, "edge": owner, "url": identity.edge_url(owner)}
        )

    async def websocket(ws: WebSocket) -> None:
        await serve_websocket(runtime, ws)

    routes = [
        Route("/healthz", healthz),
        Route("/v1/route", route),
        WebSocketRoute("/v1/ws", websocket),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    return app
