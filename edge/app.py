"""The edge's Starlette application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from core.metrics import CONTENT_TYPE
from core.schema import PROTOCOL_VERSION, USER_PATTERN
from edge.http_api import http_routes
from edge.runtime import EdgeIdentity, EdgeRuntime
from edge.websocket import serve_websocket

# Web pages served from another region's edge read these endpoints too: they
# hold nothing private, so any origin may read them (CORS).
PUBLIC_READ_HEADERS = {"Access-Control-Allow-Origin": "*"}


def regions_view(identity: EdgeIdentity) -> dict[str, Any]:
    """Describe every region, nearest to this edge's region first, with its edges.

    Clients connect to the first region whose edge accepts the connection,
    and fail over down the list.
    """
    topology = identity.topology
    return {
        "region": identity.region.name,
        "regions": [
            {
                "name": region.name,
                "edges": [
                    {
                        "name": edge.name,
                        "url": f"ws://{edge.host}:{edge.port}/v1/ws",
                        "health_url": f"http://{edge.host}:{edge.port}/healthz",
                    }
                    for edge in region.edges
                ],
            }
            for region in topology.regions_by_nearness(identity.region.name)
        ],
    }


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
        if runtime.healthy:
            status = "ok"
        elif runtime.ready:
            status = "leaf_unreachable"
        else:
            status = "starting"
        body = {
            "status": status,
            "region": identity.region.name,
            "edge": identity.edge.name,
            "mesh": identity.topology.name,
            "protocol": PROTOCOL_VERSION,
            "connections": runtime.sessions.count(),
        }
        code = 200 if runtime.healthy else 503
        return JSONResponse(body, status_code=code, headers=PUBLIC_READ_HEADERS)

    async def regions(request: Request) -> JSONResponse:
        return JSONResponse(regions_view(identity), headers=PUBLIC_READ_HEADERS)

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

    async def metrics(request: Request) -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    async def websocket(ws: WebSocket) -> None:
        await serve_websocket(runtime, ws)

    routes = [
        Route("/healthz", healthz),
        Route("/v1/regions", regions),
        Route("/v1/route", route),
        Route("/metrics", metrics),
        WebSocketRoute("/v1/ws", websocket),
        *http_routes(runtime),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    return app
