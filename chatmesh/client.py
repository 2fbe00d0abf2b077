"""A Python client for chatmesh edges over WebSocket.

The client keeps a cursor per conversation and shows each message once, in
order: an event at or below the cursor is a duplicate and is dropped; an
event past a gap is held back while the client syncs the gap, then shown
in order. `chatmesh.failover.FailoverClient` builds on it to move a session
between regions.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import structlog
import websockets
from websockets.asyncio.client import ClientConnection

from core.schema import (
    SERVER_EVENT,
    AcceptedEvent,
    CommittedEvent,
    ErrorEvent,
    GroupEvent,
    GroupsEvent,
    GroupSummary,
    GroupView,
    HelloEvent,
    MessageEvent,
    MessageView,
    PresenceEvent,
    SyncedEvent,
    UserPresence,
)

log = structlog.get_logger(__name__)

Event = Any
EventListener = Callable[[Event], None]
DEFAULT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
WRONG_EDGE_CLOSE = 4009
# The defaults of the `websockets` library.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0


class ChatError(Exception):
    """The edge rejected a request; `code` is the machine-readable reason."""

    def __init__(
        self, code: str, message: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # Set with `rate_limited`: wait this long before sending again.
        self.retry_after_ms = retry_after_ms


class ChatClient:
    """One user's connection to an edge, with cursors, dedup and gap repair.

    `events` receives every event except messages, which it receives only as
    they are shown: once each, in order per conversation. Each function in
    `listeners` is called with the same events, as they are queued.

    `connect` may be called again after the connection closed, to the same or
    another edge; cursors, shown messages and queued events carry over. The
    WebSocket pings the edge every `ping_interval_s` and closes when a pong
    takes longer than `ping_timeout_s`, which is how a frozen edge is noticed.
    A close waits up to `close_timeout_s` for the edge's closing frame, so a
    frozen edge is noticed after at most the sum of the three.
    """

    def __init__(
        self,
        url: str,
        token: str,
        cursors: dict[str, int] | None = None,
        *,
        ping_interval_s: float = PING_INTERVAL_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._token = token
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._open_timeout_s = open_timeout_s
        self._close_timeout_s = close_timeout_s
        self.listeners: list[EventListener] = []
        self.cursors: dict[str, int] = dict(cursors or {})
        self.hello: HelloEvent | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.shown: list[MessageView] = []
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._held: dict[str, dict[int, MessageView]] = {}
        self._sync_done: asyncio.Future[SyncedEvent] | None = None
        self._sync_lock = asyncio.Lock()
        self.closed = asyncio.Event()
        # The WebSocket close code of the last connection, once it closed.
        self.close_code: int | None = None

    async def connect(self, url: str | None = None) -> HelloEvent:
        """Connect and authenticate, following an edge's affinity redirect.

        With `url`, connect there instead of to `self.url`. An open
        connection is closed first.
        """
        if url is not None:
            self.url = url
        await self.close()
        for _ in range(MAX_REDIRECTS):
            ws = await websockets.connect(
                self.url,
                max_size=2**20,
                open_timeout=self._open_timeout_s,
                ping_interval=self._ping_interval_s,
                ping_timeout=self._ping_timeout_s,
                close_timeout=self._close_timeout_s,
            )
            await ws.send(_json({"type": "auth", "token": self._token}))
            event = SERVER_EVENT.validate_json(await ws.recv())
            if isinstance(event, HelloEvent):
                self._ws, self.hello = ws, event
                self.close_code = None
                self.closed.clear()
                self._reader = asyncio.create_task(self._read_loop(ws))
                return event
            redirect = await _redirect_target(ws)
            if (
                isinstance(event, ErrorEvent)
                and event.code == "wrong_edge"
                and redirect
            ):
                self.url = redirect
                continue
            if isinstance(event, ErrorEvent):
                raise ChatError(event.code, event.message, event.retry_after_ms)
            raise ChatError("unexpected_event", str(event))
        raise ChatError("redirect_loop", f"more than {MAX_REDIRECTS} edge redirects")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def send(
        self,
        to: str,
        content: str,
        client_msg_id: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> AcceptedEvent:
        """Send a message; return once the region has accepted it."""
        cmid = client_msg_id or uuid.uuid4().hex
        reply = await self._request(
            cmid, {"type": "send", "id": cmid, "to": to, "content": content}, timeout_s
        )
        assert isinstance(reply, AcceptedEvent)
        return reply

    async def send_to_group(
        self,
        group: str,
        content: str,
        client_msg_id: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> AcceptedEvent:
        """Send a message to a group; return once the region has accepted it."""
        cmid = client_msg_id or uuid.uuid4().hex
        frame = {"type": "send", "id": cmid, "group": group, "content": content}
        reply = await self._request(cmid, frame, timeout_s)
        assert isinstance(reply, AcceptedEvent)
        return reply

    async def group(self, op: str, group: str, **fields: Any) -> GroupView:
        """Run a group operation.

        `op` is create, add, remove, leave, promote, demote or members.
        """
        ref = uuid.uuid4().hex
        frame = {"type": "group", "id": ref, "op": op, "group": group, **fields}
        reply = await self._request(ref, frame, DEFAULT_TIMEOUT_S)
        assert isinstance(reply, GroupEvent)
        return reply.group

    async def groups(self) -> list[GroupSummary]:
        ref = uuid.uuid4().hex
        reply = await self._request(
            ref, {"type": "groups", "id": ref}, DEFAULT_TIMEOUT_S
        )
        assert isinstance(reply, GroupsEvent)
        return reply.groups

    async def presence(
        self, users: list[str], subscribe: bool = False
    ) -> list[UserPresence]:
        """Return the presence of `users`; with `subscribe`, changes follow."""
        ref = uuid.uuid4().hex
        frame = {"type": "presence", "id": ref, "users": users, "subscribe": subscribe}
        reply = await self._request(ref, frame, DEFAULT_TIMEOUT_S)
        assert isinstance(reply, PresenceEvent)
        return reply.users

    async def send_raw(self, text: str) -> None:
        """Send a frame as is (for tests of malformed input)."""
        assert self._ws is not None
        await self._ws.send(text)

    async def sync(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> SyncedEvent:
        """Fetch everything after the cursors; return when caught up."""
        async with self._sync_lock:
            self._sync_done = asyncio.get_running_loop().create_future()
            done = self._sync_done
            try:
                await self._send_frame({"type": "sync", "cursors": self.cursors})
                return await asyncio.wait_for(done, timeout_s)
            finally:
                self._sync_done = None
                _retrieve(done)

    async def next_event(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> Event:
        return await asyncio.wait_for(self.events.get(), timeout_s)

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Event:
        """Return the first queued event matching `predicate`, dropping others."""
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self.events.get()
                if predicate(event):
                    return event

    async def wait_for_messages(
        self, count: int, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> list[MessageView]:
        """Wait until `count` messages have been shown in total."""
        async with asyncio.timeout(timeout_s):
            while len(self.shown) < count:
                await self.events.get()
        return list(self.shown)

    # ---- internals -----------------------------------------------------------

    async def _request(
        self, ref: str, frame: dict[str, Any], timeout_s: float
    ) -> Event:
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self._send_frame(frame)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(ref, None)
            _retrieve(future)

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        """Send one frame; raise `ChatError` with code `closed` if there is no link."""
        if self._ws is None or self.closed.is_set():
            raise ChatError("closed", "not connected; call connect() first")
        try:
            await self._ws.send(_json(frame))
        except websockets.ConnectionClosed as exc:
            raise ChatError("closed", f"connection closed: {exc}") from exc

    async def _read_loop(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                await self._on_event(SERVER_EVENT.validate_json(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.closed.set()
            closed = ChatError("closed", "connection closed")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(closed)
            if self._sync_done is not None and not self._sync_done.done():
                self._sync_done.set_exception(closed)

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, AcceptedEvent):
            self._resolve(event.id, event)
        elif isinstance(event, GroupEvent | GroupsEvent) or (
            isinstance(event, PresenceEvent) and event.ref
        ):
            self._resolve(event.ref or "", event)
        elif isinstance(event, ErrorEvent):
            self._on_error(event)
        elif isinstance(event, MessageEvent):
            await self._on_message(event.message)
        elif isinstance(event, CommittedEvent):
            await self._on_committed(event)
        elif isinstance(event, SyncedEvent):
            self._on_synced(event)
        if not isinstance(event, MessageEvent):
            self._queue(event)

    def _queue(self, event: Event) -> None:
        self.events.put_nowait(event)
        for listener in self.listeners:
            listener(event)

    def _resolve(self, ref: str, event: Event) -> None:
        future = self._pending.get(ref)
        if future is not None and not future.done():
            future.set_result(event)

    def _on_error(self, event: ErrorEvent) -> None:
        error = ChatError(event.code, event.message, event.retry_after_ms)
        if (
            event.ref == "sync"
            and self._sync_done is not None
            and not self._sync_done.done()
        ):
            self._sync_done.set_exception(error)
        future = self._pending.get(event.ref or "")
        if future is not None and not future.done():
            future.set_exception(error)

    async def _on_message(self, message: MessageView) -> None:
        cursor = self.cursors.get(message.conversation, 0)
        if message.seq <= cursor:
            return
        if message.seq > cursor + 1:
            self._held.setdefault(message.conversation, {})[message.seq] = message
            if self._sync_done is None:
                asyncio.get_running_loop().create_task(self._repair_gap())
            return
        self._show(message)
        self._release_held(message.conversation)

    async def _on_committed(self, event: CommittedEvent) -> None:
        # A commit is the sender's own message: it advances the cursor like one.
        cursor = self.cursors.get(event.conversation, 0)
        if event.seq == cursor + 1:
            self.cursors[event.conversation] = event.seq
            self._release_held(event.conversation)
        elif event.seq > cursor + 1 and self._sync_done is None:
            asyncio.get_running_loop().create_task(self._repair_gap())

    def _on_synced(self, event: SyncedEvent) -> None:
        # The edge sent every readable message up to each synced cursor, so
        # what is held below it is complete even where the readable range
        # starts past the client's cursor (a member added at seq S).
        for conversation, synced in event.cursors.items():
            held = self._held.get(conversation, {})
            for seq in sorted(s for s in held if s <= synced):
                if seq > self.cursors.get(conversation, 0):
                    self._show(held.pop(seq))
            if synced > self.cursors.get(conversation, 0):
                self.cursors[conversation] = synced
            self._release_held(conversation)
        if self._sync_done is not None and not self._sync_done.done():
            self._sync_done.set_result(event)

    def _show(self, message: MessageView) -> None:
        self.cursors[message.conversation] = message.seq
        self.shown.append(message)
        self._queue(MessageEvent(message=message))

    def _release_held(self, conversation: str) -> None:
        held = self._held.get(conversation, {})
        while (
            nxt := held.pop(self.cursors.get(conversation, 0) + 1, None)
        ) is not None:
            self._show(nxt)
        for seq in [s for s in held if s <= self.cursors.get(conversation, 0)]:
            del held[seq]

    async def _repair_gap(self) -> None:
        try:
            await self.sync()
        except Exception as exc:
            log.warning("client.gap_repair_failed", error=repr(exc))


async def _redirect_target(ws: ClientConnection) -> str | None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.recv()
    await ws.wait_closed()
    if ws.close_code == WRONG_EDGE_CLOSE and ws.close_reason:
        return ws.close_reason
    return None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen.

    When the connection closes while a frame is being sent, the read loop
    fails the frame's future, but the sender raises before awaiting it.
    Without this asyncio logs "Future exception was never retrieved".
    """
    if future.done() and not future.cancelled():
        future.exception()


def _json(frame: dict[str, Any]) -> str:
    import json

    return json.dumps(frame)
