"""The WebSocket transport: authenticate, then serve frames until close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.errors import (
    ClientError,
    InvalidToken,
    MalformedFrame,
    RateLimited,
    Unavailable,
)
from core.schema import (
    AcceptedEvent,
    AuthFrame,
    ErrorEvent,
    GroupFrame,
    GroupsFrame,
    HelloEvent,
    MessageEvent,
    MessageView,
    PingFrame,
    PongEvent,
    PresenceFrame,
    SendFrame,
    SyncedEvent,
    SyncFrame,
    SyncRequest,
)
from core.tokens import verify_token
from edge.frames import decode_frame
from edge.limits import ConnectionLimits
from edge.requests import handle_group, handle_groups, handle_presence
from edge.runtime import EdgeRuntime
from edge.session_open import announce_session
from edge.sessions import Connection

log = structlog.get_logger(__name__)

AUTH_TIMEOUT_S = 10.0
# Close codes in the 4000-4999 range are the application's own.
CLOSE_INVALID_TOKEN = 4001
CLOSE_WRONG_EDGE = 4009
CLOSE_OVERFLOW = 4008
CLOSE_NOT_READY = 1013
CLOSE_RATE_LIMITED = 4029
# Rate-limit rejections of one connection are logged the first time and then
# once per this many, so a flooding client cannot flood the log too.
LOG_RATE_LIMITED_EVERY = 100


async def serve_websocket(runtime: EdgeRuntime, ws: WebSocket) -> None:
    """Run one client connection from accept to close."""
    await ws.accept()
    if not runtime.ready:
        await ws.close(CLOSE_NOT_READY, "edge is starting; retry shortly")
        return
    if not runtime.healthy:
        await ws.close(
            CLOSE_NOT_READY, "this edge cannot reach its leaf node; use another region"
        )
        return
    ip = ws.client.host if ws.client is not None else "unknown"
    try:
        runtime.limits.check_ip(ip)
    except RateLimited as exc:
        log.info("ws.connect_rate_limited", ip=ip, retry_after_ms=exc.retry_after_ms)
        await _reject_connection(ws, exc)
        return
    user = await _authenticate(runtime, ws)
    if user is None:
        return
    owner = runtime.identity.owner_of(user)
    if owner != runtime.identity.edge.name:
        url = runtime.identity.edge_url(owner)
        await _send_error(
            ws, "wrong_edge", f"user {user} is served by {owner} at {url}"
        )
        await ws.close(CLOSE_WRONG_EDGE, url)
        return
    try:
        runtime.limits.check_user_connect(user)
    except RateLimited as exc:
        log.info(
            "ws.connect_rate_limited", user=user, retry_after_ms=exc.retry_after_ms
        )
        await _reject_connection(ws, exc)
        return
    await _serve(runtime, ws, user)


async def _reject_connection(ws: WebSocket, exc: RateLimited) -> None:
    with contextlib.suppress(Exception):
        event = ErrorEvent(
            code=exc.code, message=exc.message, retry_after_ms=exc.retry_after_ms
        )
        await ws.send_text(event.model_dump_json())
        await ws.close(CLOSE_RATE_LIMITED, exc.code)


async def _authenticate(runtime: EdgeRuntime, ws: WebSocket) -> str | None:
    try:
        text = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT_S)
        frame = decode_frame(text)
        if not isinstance(frame, AuthFrame):
            raise InvalidToken('the first frame must be {"type": "auth", "token": ...}')
        ident = runtime.identity
        return verify_token(ident.token_keys, ident.audience, frame.token)
    except (ClientError, TimeoutError, KeyError) as exc:
        code, message = _auth_failure(exc)
        log.info("ws.auth_rejected", code=code, reason=message)
        with contextlib.suppress(Exception):
            await _send_error(ws, code, message)
            await ws.close(CLOSE_INVALID_TOKEN, code)
        return None
    except WebSocketDisconnect:
        return None


def _auth_failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ClientError):
        return exc.code, exc.message
    if isinstance(exc, TimeoutError):
        return "auth_timeout", f"no auth frame within {AUTH_TIMEOUT_S:.0f} s"
    return "malformed_frame", "send JSON text frames"


async def _serve(runtime: EdgeRuntime, ws: WebSocket, user: str) -> None:
    ident = runtime.identity
    conn = Connection(ident.edge.name, user)
    conn.close_transport = ws.close
    bound = log.bind(user=user, connection=conn.id, edge=ident.edge.name)
    runtime.sessions.add(conn)
    runtime.metrics.connections_opened.inc()
    writer = asyncio.create_task(conn.run_writer(ws.send_text))
    try:
        conn.push(
            HelloEvent(
                user=user,
                region=ident.region.name,
                edge=ident.edge.name,
                connection=conn.id,
            ).model_dump_json()
        )
        # Frames wait until the registry has the session, so a sync sent
        # right after hello cannot miss a message routed before it.
        await announce_session(runtime, user, conn.id)
        bound.info("ws.connected")
        await _receive_loop(runtime, ws, conn, bound)
    finally:
        runtime.sessions.remove(conn)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        bound.info("ws.disconnected")


async def _receive_loop(
    runtime: EdgeRuntime,
    ws: WebSocket,
    conn: Connection,
    bound: structlog.typing.FilteringBoundLogger,
) -> None:
    limits = runtime.limits.for_connection()
    rate_limited = 0
    while not conn.overflowed.is_set():
        # Frames already queued on the socket are read without yielding, so
        # a burst of bad frames could fill the outbox with errors before the
        # writer sends any: read only while the outbox has room.
        await conn.wait_for_room()
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        try:
            raw = text.encode() if text is not None else message.get("bytes") or b""
            size = len(raw)
            limits.charge_bytes(conn.user, size)
            if text is None:
                raise MalformedFrame(
                    "binary frames are not supported; send JSON text frames"
                )
            await _handle_frame(runtime, conn, limits, text)
        except RateLimited as exc:
            rate_limited += 1
            if rate_limited % LOG_RATE_LIMITED_EVERY == 1:
                bound.info("ws.rate_limited", reason=exc.message, count=rate_limited)
            _push_error(conn, exc)
            # Read nothing more until the tokens are back: a flooding client
            # then waits in its own TCP buffers instead of the edge's loop.
            await asyncio.sleep(exc.retry_after_ms / 1000)
        except ClientError as exc:
            bound.info(
                "ws.frame_rejected", code=exc.code, reason=exc.message, ref=exc.ref
            )
            runtime.metrics.errors.labels(kind=exc.code).inc()
            _push_error(conn, exc)
    runtime.metrics.errors.labels(kind="outbox_overflow").inc()
    await ws.close(CLOSE_OVERFLOW, "client too slow; reconnect and sync")


def _push_error(conn: Connection, exc: ClientError) -> None:
    retry_after_ms = exc.retry_after_ms if isinstance(exc, RateLimited) else None
    event = ErrorEvent(
        code=exc.code, message=exc.message, ref=exc.ref, retry_after_ms=retry_after_ms
    )
    conn.push(event.model_dump_json())


async def _handle_frame(
    runtime: EdgeRuntime, conn: Connection, limits: ConnectionLimits, text: str
) -> None:
    started = time.perf_counter()
    frame = decode_frame(text)
    limits.charge_frame(conn.user, frame)
    if isinstance(frame, SendFrame):
        await _start_send(runtime, conn, frame, started)
    elif isinstance(frame, SyncFrame):
        await _sync(runtime, conn, frame.cursors)
    elif isinstance(frame, PingFrame):
        runtime.metrics.heartbeats.inc()
        conn.push(PongEvent().model_dump_json())
    elif isinstance(frame, GroupFrame):
        conn.push((await handle_group(runtime, conn.user, frame)).model_dump_json())
    elif isinstance(frame, GroupsFrame):
        conn.push((await handle_groups(runtime, conn.user, frame)).model_dump_json())
    elif isinstance(frame, PresenceFrame):
        conn.push((await handle_presence(runtime, conn, frame)).model_dump_json())
    else:
        raise MalformedFrame(
            "already authenticated; auth is only valid as the first frame"
        )


async def _start_send(
    runtime: EdgeRuntime, conn: Connection, frame: SendFrame, started: float
) -> None:
    """Validate and batch a send in frame order; reply once its batch is stored.

    The receive loop goes on to the next frame while the batch waits for
    JetStream, so one connection may have up to `SENDS_IN_FLIGHT` messages
    in flight.
    """
    await conn.send_slots.acquire()
    try:
        acceptance = await runtime.ingest.enqueue(conn.user, conn.id, frame)
    except BaseException:
        conn.send_slots.release()
        raise
    task = asyncio.create_task(_answer_send(runtime, conn, acceptance, started))
    conn.sends.add(task)
    task.add_done_callback(conn.sends.discard)


async def _answer_send(
    runtime: EdgeRuntime,
    conn: Connection,
    acceptance: Awaitable[AcceptedEvent],
    started: float,
) -> None:
    try:
        accepted = await acceptance
    except ClientError as exc:
        log.info(
            "ws.frame_rejected",
            connection=conn.id,
            code=exc.code,
            reason=exc.message,
            ref=exc.ref,
        )
        runtime.metrics.errors.labels(kind=exc.code).inc()
        event = ErrorEvent(code=exc.code, message=exc.message, ref=exc.ref)
        conn.push(event.model_dump_json())
        return
    finally:
        conn.send_slots.release()
    conn.push(accepted.model_dump_json())
    runtime.metrics.accept_seconds.observe(time.perf_counter() - started)


async def _sync(
    runtime: EdgeRuntime, conn: Connection, cursors: dict[str, int]
) -> None:
    """Stream every missed message to `conn`, then a `synced` event."""
    positions = dict(cursors)
    while True:
        try:
            page = await runtime.core.fetch_sync_page(
                SyncRequest(user=conn.user, cursors=positions)
            )
        except Unavailable as exc:
            exc.ref = "sync"
            raise
        for message in page.messages:
            conn.push(MessageEvent(message=MessageView.of(message)).model_dump_json())
        positions.update(page.cursors)
        if not page.more:
            break
    conn.push(SyncedEvent(cursors=positions).model_dump_json())


async def _send_error(ws: WebSocket, code: str, message: str) -> None:
    await ws.send_text(ErrorEvent(code=code, message=message).model_dump_json())
