"""The edge's local sessions: connections, their outboxes, and who is here."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

SendText = Callable[[str], Awaitable[None]]
# Closes the connection's WebSocket with a close code and reason.
CloseTransport = Callable[[int, str], Awaitable[None]]
OUTBOX_LIMIT = 2048
# Messages of one connection that may await their batch's ack at once. The
# next send frame waits for a slot, so a client that sends faster than the
# leaf stores is slowed down.
SENDS_IN_FLIGHT = 32
_ids = itertools.count(1)


class Connection:
    """One client connection with a bounded outbox drained by a writer task.

    A client that cannot keep up overflows its outbox and is disconnected: it
    catches up from its cursor when it returns, instead of slowing the edge.
    """

    def __init__(self, edge: str, user: str) -> None:
        self.id = f"{edge}-{next(_ids)}"
        self.user = user
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX_LIMIT)
        self.overflowed = asyncio.Event()
        self.watching: set[str] = set()
        self.send_slots = asyncio.Semaphore(SENDS_IN_FLIGHT)
        self.sends: set[asyncio.Task[None]] = set()
        self.close_transport: CloseTransport | None = None

    def push(self, text: str) -> None:
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            if not self.overflowed.is_set():
                log.warning("connection.overflow", connection=self.id, user=self.user)
            self.overflowed.set()

    def close_outbox(self) -> None:
        """Wake the writer so it exits after what is queued."""
        try:
            self.outbox.put_nowait(None)
        except asyncio.QueueFull:
            self.overflowed.set()

    async def run_writer(self, send: SendText) -> None:
        while (text := await self.outbox.get()) is not None:
            await send(text)


class LocalSessions:
    """Connections on this edge, indexed by user, with presence bookkeeping.

    `take_changes` returns the users whose first connection opened or whose
    last connection closed since the previous call: what the next presence
    report carries.
    """

    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, Connection]] = {}
        self._by_id: dict[str, Connection] = {}
        self._watchers: dict[str, dict[str, Connection]] = {}
        self._came: set[str] = set()
        self._went: set[str] = set()

    def add(self, conn: Connection) -> None:
        conns = self._by_user.setdefault(conn.user, {})
        if not conns:
            self._went.discard(conn.user)
            self._came.add(conn.user)
        conns[conn.id] = conn
        self._by_id[conn.id] = conn

    def remove(self, conn: Connection) -> None:
        self.unwatch_all(conn)
        self._by_id.pop(conn.id, None)
        conns = self._by_user.get(conn.user, {})
        conns.pop(conn.id, None)
        if not conns:
            self._by_user.pop(conn.user, None)
            self._came.discard(conn.user)
            self._went.add(conn.user)

    def take_changes(self) -> tuple[list[str], list[str]]:
        came, went = sorted(self._came), sorted(self._went)
        self._came.clear()
        self._went.clear()
        return came, went

    def connections_of(self, user: str) -> list[Connection]:
        return list(self._by_user.get(user, {}).values())

    def connections_of_id(self, connection_id: str) -> list[Connection]:
        """Return the connection with this id, if it is still open, as a list."""
        conn = self._by_id.get(connection_id)
        return [conn] if conn is not None else []

    def users(self) -> list[str]:
        return sorted(self._by_user)

    async def close_all(self, code: int, reason: str) -> int:
        """Close every connection's WebSocket; return how many were closed."""
        closed = 0
        for conn in list(self._by_id.values()):
            if conn.close_transport is None:
                continue
            try:
                await conn.close_transport(code, reason)
            except Exception as exc:  # The client may be gone already.
                log.info("connection.close_failed", connection=conn.id, error=repr(exc))
                continue
            closed += 1
        return closed

    def count(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())

    # ---- presence subscriptions ---------------------------------------------

    def watch(self, conn: Connection, users: list[str]) -> None:
        for user in users:
            self._watchers.setdefault(user, {})[conn.id] = conn
            conn.watching.add(user)

    def unwatch_all(self, conn: Connection) -> None:
        for user in conn.watching:
            watchers = self._watchers.get(user, {})
            watchers.pop(conn.id, None)
            if not watchers:
                self._watchers.pop(user, None)
        conn.watching.clear()

    def watchers_of(self, user: str) -> list[Connection]:
        return list(self._watchers.get(user, {}).values())
