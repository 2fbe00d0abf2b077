"""The HTTP transport of the edge, beside the WebSocket, with the same rules.

Requests authenticate with `Authorization: Bearer <token>`, are served only
by the user's owner edge, and send the same frames as the WebSocket: a
`send` frame to `POST /v1/messages`, a `sync` frame (or its cursors) to
`/v1/events`. Messages go through the same `Ingest.accept`, and polls read
the same core sync service. The protocol is described in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
import structlog
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from core.errors import (
    ClientError,
    ContentTooLarge,
    InvalidToken,
    MalformedFrame,
    Unavailable,
    WrongEdge,
)
from core.schema import HelloEvent, SendFrame, SyncFrame
from core.tokens import DEFAULT_TTL_S, mint_token, verify_token
from edge.frames import decode_frame
from edge.http_models import DevTokenReply, DevTokenRequest, HttpError
from edge.longpoll import MAX_WAIT_S, PollSession, PollSessions, poll
from edge.openapi import render_openapi_yaml
from edge.runtime import EdgeRuntime

log = structlog.get_logger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

STATIC_DIR = Path(__file__).parent / "static"
# The same bound as the WebSocket frame limit in edge/server.py.
MAX_BODY_BYTES = 256 * 1024
MAX_TOKEN_CHARS = 4096
RETRY_AFTER_S = 2
# Sends without a session name no connection, so their commit reaches the
# sender only as a `message` event in a later poll.
SESSIONLESS_CONNECTION = "http-sessionless"
JSON_TYPE = "application/json"

STATUS_BY_CODE = {
    "bad_request": 400,
    "malformed_frame": 400,
    "invalid_recipient": 400,
    "invalid_token": 401,
    "invalid_request": 400,
    "not_authorized": 403,
    "not_a_member": 403,
    "not_found": 404,
    "group_not_found": 404,
    "unknown_recipient": 404,
    "unknown_session": 404,
    "group_exists": 409,
    "group_full": 409,
    "content_too_large": 413,
    "wrong_edge": 421,
    "unavailable": 503,
}


class NotFound(ClientError):
    code = "not_found"


def http_routes(runtime: EdgeRuntime) -> list[BaseRoute]:
    """Return the HTTP API, the OpenAPI document and the web page of the edge."""
    api = HttpApi(runtime)
    return [
        Route("/", api.index, methods=["GET"]),
        Route("/openapi.yaml", api.openapi, methods=["GET"]),
        Route("/v1/sessions", _rejecting(api.create_session), methods=["POST"]),
        Route(
            "/v1/sessions/{session}",
            _rejecting(api.delete_session),
            methods=["DELETE"],
        ),
        Route("/v1/messages", _rejecting(api.send_message), methods=["POST"]),
        Route("/v1/events", _rejecting(api.poll_events), methods=["GET", "POST"]),
        Route("/v1/dev/token", _rejecting(api.mint_dev_token), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]


class HttpApi:
    """The endpoints of the HTTP transport of one edge."""

    def __init__(self, runtime: EdgeRuntime) -> None:
        self._runtime = runtime
        self._sessions = PollSessions(runtime)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html")

    async def openapi(self, request: Request) -> Response:
        return Response(render_openapi_yaml(), media_type="application/yaml")

    async def create_session(self, request: Request) -> Response:
        user = self._authorize(request)
        session = self._sessions.create(user)
        await self._sessions.begin(session)
        self._sessions.end(session, client_gone=False)
        ident = self._runtime.identity
        hello = HelloEvent(
            user=user,
            region=ident.region.name,
            edge=ident.edge.name,
            connection=session.id,
        )
        return _json(hello, 201, {"Location": f"/v1/sessions/{session.id}"})

    async def delete_session(self, request: Request) -> Response:
        user = self._authorize(request)
        session = self._sessions.find(request.path_params["session"], user)
        self._sessions.close(session)
        return Response(status_code=204)

    async def send_message(self, request: Request) -> Response:
        user = self._authorize(request)
        session = self._named_session(request, user)
        frame = decode_frame(await _read_body(request))
        if not isinstance(frame, SendFrame):
            raise MalformedFrame(
                f"POST /v1/messages takes a send frame, got a {frame.type} frame",
                ref=getattr(frame, "id", None),
            )
        ingest = self._runtime.ingest
        if session is None:
            accepted = await ingest.accept(user, SESSIONLESS_CONNECTION, frame)
            return _json(accepted, 202)
        await self._sessions.begin(session)
        try:
            # Recorded first: the commit may reach a poll before accept returns.
            session.record_send(frame.id)
            accepted = await ingest.accept(user, session.id, frame)
        finally:
            self._sessions.end(session, client_gone=False)
        return _json(accepted, 202)

    async def poll_events(self, request: Request) -> Response:
        user = self._authorize(request)
        wait_s = _parse_wait(request.query_params.get("wait_s"))
        cursors = await _read_cursors(request)
        session = self._named_session(request, user) or self._sessions.temporary(user)
        await self._sessions.begin(session)
        disconnect = _watch_disconnect(request)
        client_gone = False
        try:
            page = await poll(self._runtime, session, cursors, wait_s, disconnect)
        finally:
            client_gone = disconnect.done()
            disconnect.cancel()
            self._sessions.end(session, client_gone=client_gone)
        if client_gone:
            log.info("http.poll_abandoned", user=user, session=session.id)
        return _json(page, 200)

    async def mint_dev_token(self, request: Request) -> Response:
        ident = self._runtime.identity
        dev_users = ident.topology.dev_users
        if not dev_users or ident.dev_signing_key is None:
            raise NotFound(
                "this edge mints no development tokens: its topology has no dev_users"
            )
        text = await _read_body(request)
        try:
            body = DevTokenRequest.model_validate_json(text)
        except ValidationError as exc:
            raise ClientError(f"invalid token request: {_describe(exc)}") from exc
        if body.user not in dev_users:
            raise NotFound(f"{body.user!r} is not a development user of this topology")
        token = mint_token(
            ident.dev_signing_key, body.user, ident.audience, DEFAULT_TTL_S
        )
        log.info("http.dev_token_minted", user=body.user, edge=ident.edge.name)
        return _json(
            DevTokenReply(user=body.user, token=token, expires_in_s=DEFAULT_TTL_S), 200
        )

    def _authorize(self, request: Request) -> str:
        """Return the request's user; raise unless this edge may serve them now."""
        if not self._runtime.ready:
            raise Unavailable("the edge is starting; retry shortly")
        ident = self._runtime.identity
        user = verify_token(ident.token_keys, ident.audience, _bearer_token(request))
        owner = ident.owner_of(user)
        if owner != ident.edge.name:
            url = _edge_base_url(self._runtime, owner)
            raise WrongEdge(
                f"user {user} is served by edge {owner} at {url}; send requests there",
                owner_url=url,
            )
        return user

    def _named_session(self, request: Request, user: str) -> PollSession | None:
        session_id = request.query_params.get("session")
        if session_id is None:
            return None
        return self._sessions.find(session_id, user)


def _rejecting(endpoint: Endpoint) -> Endpoint:
    """Wrap `endpoint` so a `ClientError` becomes its JSON error response."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ClientError as exc:
            log.info(
                "http.request_rejected",
                method=request.method,
                path=request.url.path,
                code=exc.code,
                reason=exc.message,
                ref=exc.ref,
            )
            return error_response(exc)
        except nats.errors.Error as exc:
            # Core requests map timeouts to `Unavailable`; other NATS
            # failures (a link that is reconnecting, say) mean the same.
            log.warning(
                "http.nats_failed",
                method=request.method,
                path=request.url.path,
                error=repr(exc),
            )
            return error_response(
                Unavailable("the edge lost its link to the region; retry shortly")
            )
        except ClientDisconnect:
            log.info(
                "http.client_disconnected", method=request.method, path=request.url.path
            )
            return Response(status_code=400)

    return run


def error_response(exc: ClientError) -> Response:
    """Return the HTTP response for `exc`: its status, headers and JSON body."""
    status = STATUS_BY_CODE.get(exc.code, 400)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="chatmesh", error="invalid_token"'
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    url = exc.owner_url if isinstance(exc, WrongEdge) else None
    body = HttpError(code=exc.code, message=exc.message, ref=exc.ref, url=url)
    return Response(
        body.model_dump_json(exclude_none=True),
        status,
        headers=headers,
        media_type=JSON_TYPE,
    )


def _json(
    body: BaseModel, status: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(body.model_dump_json(), status, headers, media_type=JSON_TYPE)


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise InvalidToken(
            "missing Authorization header; send 'Authorization: Bearer <token>'"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("the Authorization header must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"token is longer than {MAX_TOKEN_CHARS} characters")
    return token


def _edge_base_url(runtime: EdgeRuntime, name: str) -> str:
    for edge in runtime.identity.region.edges:
        if edge.name == name:
            return f"http://{edge.host}:{edge.port}"
    raise KeyError(name)


async def _read_body(request: Request) -> str:
    """Return the request body as text; raise if it is too large or not UTF-8."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ContentTooLarge(
            f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ContentTooLarge(
                f"request body is over the limit of {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(
            f"request body is not valid UTF-8 (byte {exc.start}); send JSON text"
        ) from exc


async def _read_cursors(request: Request) -> dict[str, int]:
    """Return the poll's cursors: a `sync` frame body, or the `cursors` query."""
    raw = request.query_params.get("cursors")
    if request.method == "GET":
        return _parse_cursors(raw)
    if raw is not None:
        raise ClientError(
            "POST /v1/events takes its cursors in the body, not in the query"
        )
    frame = decode_frame(await _read_body(request))
    if not isinstance(frame, SyncFrame):
        raise MalformedFrame(
            f"POST /v1/events takes a sync frame, got a {frame.type} frame"
        )
    return dict(frame.cursors)


def _parse_cursors(raw: str | None) -> dict[str, int]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ClientError(
            f"cursors is not valid JSON ({exc.msg} at position {exc.pos}); "
            'send an object such as {"dm:alice:bob": 12}'
        ) from exc
    try:
        frame = SyncFrame.model_validate({"type": "sync", "cursors": value})
    except ValidationError as exc:
        raise ClientError(f"invalid cursors: {_describe(exc)}") from exc
    return dict(frame.cursors)


def _parse_wait(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError as exc:
        raise ClientError(f"wait_s must be a number of seconds, got {raw!r}") from exc
    # Written so that NaN fails too.
    if not 0.0 <= value <= MAX_WAIT_S:
        raise ClientError(
            f"wait_s must be between 0 and {MAX_WAIT_S:g} seconds, got {raw!r}"
        )
    return value


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _watch_disconnect(request: Request) -> asyncio.Task[None]:
    return asyncio.create_task(_wait_for_disconnect(request))


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (ASGI `http.disconnect`)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
