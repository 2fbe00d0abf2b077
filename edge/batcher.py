"""Gather client messages into batches, one JetStream write per batch.

Every write to a leaf stream waits for an fsync, so one write per client
message caps an edge at the disk's fsync rate. The batcher keeps messages
for at most the linger time (or until the batch is full) and stores them
with one publish. A message's `submit` returns only when JetStream has
acknowledged the batch that contains it, so `accepted` keeps its meaning:
the message is on the leaf's disk.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from nats.js.api import PubAck

from core.metrics import EdgeMetrics
from core.schema import encode_ingest_batch
from topology.model import Ingest as IngestSettings

log = structlog.get_logger(__name__)

# (payload, Nats-Msg-Id) -> the stream's ack; raises when the write failed.
PublishBatch = Callable[[bytes, str], Awaitable[PubAck]]
# The edge replies to a same-edge resend inside this window from memory.
RECENT_WINDOW_S = 120.0
RECENT_MAX_ENTRIES = 200_000


@dataclass
class _Batch:
    envelopes: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0


class IngestBatcher:
    """Batch encoded envelopes for one edge; `submit` waits for the batch's ack."""

    def __init__(
        self,
        edge: str,
        publish: PublishBatch,
        settings: IngestSettings,
        metrics: EdgeMetrics,
    ) -> None:
        self._edge = edge
        self._publish = publish
        self._settings = settings
        self._metrics = metrics
        self._linger_s = settings.batch_linger_ms / 1000
        # A new prefix per process keeps batch ids unique across restarts.
        self._prefix = f"{edge}:{uuid.uuid4().hex[:12]}"
        self._numbers = itertools.count(1)
        self._open = _Batch()
        self._timer: asyncio.TimerHandle | None = None
        # Batches are published in the order they close, up to
        # `max_batches_in_flight` at once. Full batches queue in `_closed`.
        # When every slot is busy, the open batch keeps growing past its
        # linger time and is sent as soon as a slot frees.
        self._closed: deque[_Batch] = deque()
        self._in_flight = 0
        self._send_when_free = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, envelope: bytes) -> None:
        """Add one encoded envelope; return once its batch is stored.

        Raises the publish error of the batch when JetStream did not store it.
        """
        await self.add(envelope)

    def add(self, envelope: bytes) -> asyncio.Future[None]:
        """Add one encoded envelope to the open batch; return its batch's outcome.

        Envelopes enter batches, and batches enter the stream, in the order
        of `add` calls. The future fails with the publish error of the batch
        when JetStream did not store it.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = self._open
        batch.envelopes.append(envelope)
        batch.waiters.append(future)
        batch.size += len(envelope)
        if self._full(batch):
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._linger_s, self._flush
            )
        return future

    async def close(self) -> None:
        """Send what is open and wait for every batch in flight."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._open.envelopes:
            self._closed.append(self._take_open())
        self._send_next()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _full(self, batch: _Batch) -> bool:
        return (
            len(batch.envelopes) >= self._settings.batch_max_messages
            or batch.size >= self._settings.batch_max_bytes
        )

    def _take_open(self) -> _Batch:
        batch, self._open = self._open, _Batch()
        return batch

    def _flush(self) -> None:
        """Close the open batch: on its linger timer, or when it is full."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._full(self._open):
            self._closed.append(self._take_open())
        elif self._open.envelopes:
            self._send_when_free = True
        self._send_next()

    def _send_next(self) -> None:
        """Start sending closed batches, in order, while slots are free."""
        while self._in_flight < self._settings.max_batches_in_flight:
            if self._closed:
                batch = self._closed.popleft()
            elif self._send_when_free and self._open.envelopes:
                batch = self._take_open()
            else:
                self._send_when_free = False
                return
            self._send_when_free = False
            self._in_flight += 1
            # Tasks start in the order they are created, and nats-py queues a
            # publish before its first await, so batches publish in order.
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Batch) -> None:
        try:
            await self._publish_batch(batch)
        finally:
            self._in_flight -= 1
            self._send_next()

    async def _publish_batch(self, batch: _Batch) -> None:
        batch_id = f"{self._prefix}:{next(self._numbers)}"
        payload = encode_ingest_batch(self._edge, batch_id, batch.envelopes)
        started = time.perf_counter()
        try:
            await self._publish(payload, batch_id)
        except Exception as exc:
            log.warning(
                "batcher.publish_failed",
                batch_id=batch_id,
                messages=len(batch.envelopes),
                error=repr(exc),
            )
            self._metrics.errors.labels(kind="ingest_publish_failed").inc()
            _settle(batch.waiters, exc)
            return
        self._metrics.batch_messages.observe(len(batch.envelopes))
        log.debug(
            "batcher.stored",
            batch_id=batch_id,
            messages=len(batch.envelopes),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        _settle(batch.waiters, None)


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class RecentIds:
    """(sender, client id) pairs this edge stored recently, with their batch.

    A resend of an id that is stored, or still in flight, on this edge gets
    a duplicate reply without a second write. Other resends (after a
    restart, on another edge, or after the window) are written again and
    the store's (sender, client_msg_id) key keeps them from being stored
    twice.
    """

    def __init__(
        self, window_s: float = RECENT_WINDOW_S, max_entries: int = RECENT_MAX_ENTRIES
    ) -> None:
        self._window_s = window_s
        self._max_entries = max_entries
        # key -> (monotonic time stored, or None while in flight; its future)
        self._entries: dict[str, tuple[float | None, asyncio.Future[None]]] = {}

    def lookup(self, key: str) -> asyncio.Future[None] | None:
        """Return the future of a recent or in-flight store of `key`, if any."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, future = entry
        if stored_at is not None and time.monotonic() - stored_at > self._window_s:
            del self._entries[key]
            return None
        return future

    def start(self, key: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._entries[key] = (None, future)
        return future

    def finish(
        self, key: str, future: asyncio.Future[None], error: Exception | None
    ) -> None:
        """Record the outcome; a failed store is forgotten so a resend writes again."""
        if error is None:
            self._entries[key] = (time.monotonic(), future)
            future.set_result(None)
            self._evict()
        else:
            self._entries.pop(key, None)
            future.set_exception(error)
            # No other sender may wait on it: mark the error as retrieved so
            # asyncio does not log it.
            future.exception()

    def _evict(self) -> None:
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries))
            stored_at, _ = self._entries[oldest]
            expired = stored_at is not None and now - stored_at > self._window_s
            if not expired and len(self._entries) <= self._max_entries:
                return
            del self._entries[oldest]
