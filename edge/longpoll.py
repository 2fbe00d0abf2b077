"""Polling sessions of the HTTP transport, and the poll itself.

A poll reads its messages only from the core's sync service, so it returns
exactly the messages after the client's cursors, each once and in order, whatever
reached the edge meanwhile. Deliveries only wake a waiting poll: while a
session is registered, the delivery fan-out pushes to its connection's
outbox like to a WebSocket's, and a waiting poll awaits that outbox.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import OrderedDict, deque
from typing import Any

import structlog

from core.errors import ClientError
from core.schema import (
    CommittedEvent,
    ErrorEvent,
    MessageEvent,
    MessageView,
    StoredMessage,
    SyncRequest,
)
from edge.http_models import EventsPage, PolledEvent
from edge.runtime import EdgeRuntime
from edge.session_open import announce_session
from edge.sessions import Connection

log = structlog.get_logger(__name__)

# NOTE: on shutdown, uvicorn waits for running polls to end (up to this
# long) unless edge/server.py sets `timeout_graceful_shutdown`.
MAX_WAIT_S = 30.0
# A session stays registered this long after its last request ends, so a
# client that polls again at once never drops out of presence or routing.
LINGER_S = 10.0
# A session with no request for this long is forgotten; its id then gets 404.
SESSION_TTL_S = 300.0
# Pages of the core's sync service per poll. Each page contains up to 200
# messages (the `SyncRequest` default). Past that the response sets `more`.
MAX_SYNC_PAGES = 5
MAX_PENDING_SENDS = 1024
# A poll may skip the core's sync service when the session's last sync is
# still valid (see `PollSession.is_caught_up`), but never past this age. It
# bounds how late a message can arrive if a delivery to this edge was lost.
RESYNC_AFTER_S = 120.0


class UnknownSession(ClientError):
    """The session id is not open on this edge for this user."""

    code = "unknown_session"


class PollSession:
    """One HTTP client's session on this edge.

    Its connection is in the edge's `LocalSessions` while a request of the
    session runs and for `LINGER_S` after the last one ends. While it is
    there, presence reports name the user and deliveries wake its polls.
    """

    def __init__(self, edge: str, user: str, *, stored: bool) -> None:
        self.connection = Connection(edge, user)
        # A random id, so an id kept across an edge restart names no other
        # client's session.
        self.connection.id = f"{edge}-http-{secrets.token_hex(8)}"
        self.user = user
        self.stored = stored
        self.closed = False
        self.active_requests = 0
        self.registered = False
        self.announced: asyncio.Task[bool] | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.expiry: asyncio.TimerHandle | None = None
        # Client message ids accepted over this session. The poll turns
        # their messages into `committed` events, as the WebSocket transport
        # does for the connection that sent them.
        self._sent: OrderedDict[str, None] = OrderedDict()
        # Errors the fan-out pushed to this session, such as a send the core
        # rejected after it was accepted; the next poll returns them.
        self._errors: deque[ErrorEvent] = deque(maxlen=MAX_PENDING_SENDS)
        self._poll_done: asyncio.Event | None = None
        # How often the session was registered, and (registration, cursors,
        # loop time) of its last sync with the core.
        self.registrations = 0
        self._last_sync: tuple[int, dict[str, int], float] | None = None

    @property
    def id(self) -> str:
        return self.connection.id

    def record_send(self, client_msg_id: str) -> None:
        self._sent[client_msg_id] = None
        self._sent.move_to_end(client_msg_id)
        while len(self._sent) > MAX_PENDING_SENDS:
            self._sent.popitem(last=False)

    def event_for(self, message: StoredMessage) -> PolledEvent:
        """Return the event a poll of this session shows for `message`."""
        if message.sender == self.user and message.client_msg_id in self._sent:
            return CommittedEvent(
                id=message.client_msg_id,
                message_id=str(message.message_id),
                conversation=message.conversation,
                seq=message.seq,
                timestamp_ms=message.timestamp_ms,
            )
        return MessageEvent(message=MessageView.of(message))

    def mark_synced(self, page: EventsPage, started_at: float) -> None:
        if page.more:
            # More messages wait after these cursors: the next poll must sync.
            self._last_sync = None
        else:
            self._last_sync = (self.registrations, dict(page.cursors), started_at)

    def is_caught_up(self, cursors: dict[str, int], now: float) -> bool:
        """Return whether a sync from `cursors` is known to return nothing.

        While a session stays registered and known to the core, the delivery
        of every message committed after its last sync reaches its outbox. So
        if that sync ended at `cursors` and the outbox is still empty, no
        message after `cursors` exists yet.
        """
        if self._last_sync is None or not self._announced_ok():
            return False
        registration, synced, started_at = self._last_sync
        return (
            self.registered
            and registration == self.registrations
            and synced == cursors
            and self.connection.outbox.empty()
            and not self._errors
            and now - started_at < RESYNC_AFTER_S
        )

    def _announced_ok(self) -> bool:
        task = self.announced
        if task is None or not task.done() or task.cancelled():
            return False
        return task.exception() is None and task.result()

    def announce_failed(self) -> bool:
        task = self.announced
        return task is not None and task.done() and not self._announced_ok()

    def start_poll(self) -> asyncio.Event:
        """Begin a poll; a poll of this session still waiting returns at once."""
        self.interrupt_poll()
        self._poll_done = asyncio.Event()
        return self._poll_done

    def finish_poll(self, done: asyncio.Event) -> None:
        if self._poll_done is done:
            self._poll_done = None

    def interrupt_poll(self) -> None:
        if self._poll_done is not None:
            self._poll_done.set()

    def drain_wakeups(self) -> None:
        """Empty the outbox: the next sync covers every message it named."""
        outbox = self.connection.outbox
        while not outbox.empty():
            self.keep_error(outbox.get_nowait())
        self.connection.overflowed.clear()

    def keep_error(self, text: str | None) -> None:
        """Keep `text` for the next poll if it is an error event."""
        if text is not None and json.loads(text).get("type") == "error":
            self._errors.append(ErrorEvent.model_validate_json(text))

    def take_errors(self) -> list[ErrorEvent]:
        errors = list(self._errors)
        self._errors.clear()
        return errors


class PollSessions:
    """The polling sessions of one edge, and their registration in it."""

    def __init__(self, runtime: EdgeRuntime) -> None:
        self._runtime = runtime
        self._by_id: dict[str, PollSession] = {}

    def create(self, user: str) -> PollSession:
        session = PollSession(self._runtime.identity.edge.name, user, stored=True)
        self._by_id[session.id] = session
        log.info("http.session_created", user=user, session=session.id)
        return session

    def temporary(self, user: str) -> PollSession:
        """Return a session for one request, for clients that name none."""
        return PollSession(self._runtime.identity.edge.name, user, stored=False)

    def find(self, session_id: str, user: str) -> PollSession:
        session = self._by_id.get(session_id)
        if session is None or session.user != user:
            raise UnknownSession(
                f"no open session {session_id!r} for user {user} on this edge; "
                "create one with POST /v1/sessions and poll from your cursors"
            )
        return session

    def count(self) -> int:
        return len(self._by_id)

    async def begin(self, session: PollSession) -> None:
        """Mark a request of `session` as running; register it if it is not."""
        if session.closed:
            raise UnknownSession(f"session {session.id!r} was closed")
        session.active_requests += 1
        _cancel(session.linger)
        session.linger = None
        _cancel(session.expiry)
        session.expiry = None
        if not session.registered:
            self._runtime.sessions.add(session.connection)
            session.registered = True
            session.registrations += 1
            session.announced = None
        if session.announced is None or session.announce_failed():
            # A failed report is retried by the session's next request.
            session.announced = asyncio.create_task(
                announce_session(self._runtime, session.user, session.id)
            )
        # Every request waits, so none syncs before the core's registry has
        # the session and routes new messages here.
        try:
            await asyncio.shield(session.announced)
        except BaseException:
            self.end(session, client_gone=True)
            raise

    def end(self, session: PollSession, *, client_gone: bool) -> None:
        """Mark a request of `session` as done; unregister when none is left.

        A stored session lingers unless its client went away mid-request.
        """
        session.active_requests -= 1
        if session.active_requests > 0 or session.closed:
            return
        loop = asyncio.get_running_loop()
        if client_gone or not session.stored:
            self._unregister(session)
        else:
            session.linger = loop.call_later(LINGER_S, self._unregister, session)
        if session.stored:
            session.expiry = loop.call_later(SESSION_TTL_S, self._expire, session)

    def close(self, session: PollSession) -> None:
        """Forget `session` at once; a poll of it still waiting returns."""
        session.closed = True
        session.interrupt_poll()
        _cancel(session.linger)
        _cancel(session.expiry)
        self._unregister(session)
        self._by_id.pop(session.id, None)
        log.info("http.session_closed", user=session.user, session=session.id)

    def _unregister(self, session: PollSession) -> None:
        if session.registered:
            self._runtime.sessions.remove(session.connection)
            session.registered = False
            session.announced = None
            session.drain_wakeups()

    def _expire(self, session: PollSession) -> None:
        if session.active_requests == 0 and not session.closed:
            log.info("http.session_expired", user=session.user, session=session.id)
            self.close(session)


async def poll(
    runtime: EdgeRuntime,
    session: PollSession,
    cursors: dict[str, int],
    wait_s: float,
    client_gone: asyncio.Future[None],
) -> EventsPage:
    """Return the events after `cursors`, waiting up to `wait_s` for one.

    The wait ends early when a delivery for the user reaches the edge, when
    another poll of the session starts, or when `client_gone` completes.
    """
    done = session.start_poll()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait_s, MAX_WAIT_S)
    try:
        if session.is_caught_up(cursors, loop.time()):
            page = EventsPage(events=[], cursors=dict(cursors), more=False)
        else:
            page = await _sync_from(runtime, session, cursors)
        while not (page.events or page.more or done.is_set()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not await _wait_for_delivery(session, done, client_gone, remaining):
                break
            page = await _sync_from(runtime, session, page.cursors)
        return page
    finally:
        session.finish_poll(done)


async def _sync_from(
    runtime: EdgeRuntime, session: PollSession, cursors: dict[str, int]
) -> EventsPage:
    # Emptied first: a delivery that arrives during the sync stays queued and
    # makes the next poll sync again.
    session.drain_wakeups()
    started_at = asyncio.get_running_loop().time()
    page = await collect_events(runtime, session, cursors)
    session.mark_synced(page, started_at)
    return page


async def collect_events(
    runtime: EdgeRuntime, session: PollSession, cursors: dict[str, int]
) -> EventsPage:
    """Page through the core's sync service from `cursors`, as WebSocket sync does."""
    positions = dict(cursors)
    events: list[PolledEvent] = list(session.take_errors())
    more = False
    for _ in range(MAX_SYNC_PAGES):
        page = await runtime.core.fetch_sync_page(
            SyncRequest(user=session.user, cursors=positions)
        )
        events.extend(session.event_for(message) for message in page.messages)
        positions.update(page.cursors)
        more = page.more
        if not more:
            break
    return EventsPage(events=events, cursors=positions, more=more)


async def _wait_for_delivery(
    session: PollSession,
    done: asyncio.Event,
    client_gone: asyncio.Future[None],
    timeout_s: float,
) -> bool:
    """Sleep until a delivery wakes the session; return False on anything else."""
    delivery = asyncio.ensure_future(session.connection.outbox.get())
    interrupted = asyncio.ensure_future(done.wait())
    waiters: set[asyncio.Future[Any]] = {delivery, interrupted, client_gone}
    try:
        finished, _ = await asyncio.wait(
            waiters,
            timeout=timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        delivery.cancel()
        interrupted.cancel()
    if delivery.done() and not delivery.cancelled():
        session.keep_error(delivery.result())
    return delivery in finished and not done.is_set() and not client_gone.done()


def _cancel(handle: asyncio.TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()
