"""The edge's local sessions: connections, their outboxes, and who is here."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

SendText = Callable[[str], Awaitable[None]]
OUTBOX_LIMIT = 2048
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
    """Connections on this edge, indexed by user."""

    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, Connection]] = {}

    def add(self, conn: Connection) -> None:
        self._by_user.setdefault(conn.user, {})[conn.id] = conn

    def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user, {})
        conns.pop(conn.id, None)
        if not conns:
            self._by_user.pop(conn.user, None)

    def connections_of(self, user: str) -> list[Connection]:
        return list(self._by_user.get(user, {}).values())

    def users(self) -> list[str]:
        return sorted(self._by_user)

    def count(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())
