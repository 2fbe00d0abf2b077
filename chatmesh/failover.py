"""Client-side failover between regions, on top of `ChatClient`.

`FailoverClient` keeps one user's session going while regions fail:

- It reads the regions, nearest first, from an edge's `GET /v1/regions`.
- It connects to the nearest region whose edge accepts the connection.
  When the connection drops, or the region keeps rejecting sends as
  `unavailable`, it reconnects to the next region, with exponential backoff
  and full jitter between attempts.
- After each connect it syncs from its cursors, so it misses nothing, and
  resends, in their order and with their ids, the messages that were sent
  but not yet seen committed. So a sender's messages keep their order
  whichever region commits them, and the store's (sender, client message
  id) key stores each of them once.
- While it is away from the nearest region, it probes that region's
  `/healthz` and moves back after `healthy_probes` healthy responses in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
import websockets

from chatmesh.client import ChatClient, ChatError, Event
from core.schema import (
    AcceptedEvent,
    CommittedEvent,
    ErrorEvent,
    HelloEvent,
    MessageEvent,
    MessageView,
    SyncedEvent,
    UserPresence,
)

log = structlog.get_logger(__name__)

# Errors after which the same send may succeed on another attempt.
RETRYABLE_CODES = frozenset({"closed", "unavailable", "timeout"})
# WebSocket close code 1012, "service restart": the edge restarted a part of
# itself and serves again at once, so the client may stay in the region.
CLOSE_SERVICE_RESTART = 1012


@dataclass(frozen=True)
class EdgeEndpoint:
    """One edge as `/v1/regions` lists it."""

    name: str
    url: str
    health_url: str


@dataclass(frozen=True)
class RegionEndpoints:
    """One region and its edges, as `/v1/regions` lists it."""

    name: str
    edges: tuple[EdgeEndpoint, ...]


@dataclass(frozen=True)
class FailoverPolicy:
    """Timings of reconnects, failback probes and sends; durations in seconds."""

    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 5.0
    sync_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    # After this many sends in a row rejected as `unavailable`, the client
    # leaves the region for the next one.
    unavailable_limit: int = 3
    probe_interval_s: float = 2.0
    probe_interval_max_s: float = 60.0
    healthy_probes: int = 2
    ping_interval_s: float = 2.0
    ping_timeout_s: float = 3.0
    close_timeout_s: float = 1.0


@dataclass
class Resumption:
    """One move of the session: when it was lost and when it resumed where.

    Times are `time.monotonic()` values. `synced_at` stays None until a sync
    on the new connection succeeds.
    """

    from_region: str | None
    to_region: str
    reason: str
    lost_at: float
    connected_at: float
    synced_at: float | None = None


@dataclass
class _Outgoing:
    frame: dict[str, Any]
    # The session generation on which the edge last accepted it.
    accepted_on: int = 0


class _SendFailed(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Session:
    """One connection to a region; each reconnect makes a new one."""

    generation: int = 0
    region: str | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""


async def fetch_regions(edge_url: str, timeout_s: float = 5.0) -> list[RegionEndpoints]:
    """Read the regions, nearest first, from the edge at `edge_url` (ws or http)."""
    url = http_base(edge_url) + "/v1/regions"
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        response = await client.get(url)
        response.raise_for_status()
        body = response.json()
    return [
        RegionEndpoints(
            name=region["name"],
            edges=tuple(
                EdgeEndpoint(e["name"], e["url"], e["health_url"])
                for e in region["edges"]
            ),
        )
        for region in body["regions"]
    ]


def http_base(url: str) -> str:
    """Return the scheme and host of an edge URL, with ws(s) turned into http(s)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"invalid edge URL {url!r}; give ws://HOST:PORT/... or http://HOST:PORT"
        )
    return f"{scheme}://{parts.netloc}"


class FailoverClient:
    """One user's session that moves between regions as they fail and recover.

    `events`, `shown` and `cursors` are those of the underlying `ChatClient`
    and carry over from one connection to the next.
    """

    def __init__(
        self,
        edge_url: str,
        token: str,
        cursors: dict[str, int] | None = None,
        policy: FailoverPolicy | None = None,
    ) -> None:
        self._edge_url = edge_url
        self.policy = policy or FailoverPolicy()
        self.client = ChatClient(
            "",
            token,
            cursors,
            ping_interval_s=self.policy.ping_interval_s,
            ping_timeout_s=self.policy.ping_timeout_s,
            open_timeout_s=self.policy.connect_timeout_s,
            close_timeout_s=self.policy.close_timeout_s,
        )
        self.client.listeners.append(self._on_event)
        self.regions: list[RegionEndpoints] = []
        self.resumptions: list[Resumption] = []
        self._session = _Session()
        # Set while a session is connected; sends wait for it.
        self._ready = asyncio.Event()
        self._outbox: dict[str, _Outgoing] = {}
        self._send_lock = asyncio.Lock()
        self._edge_in_region: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None

    # ---- public --------------------------------------------------------------

    @property
    def events(self) -> asyncio.Queue[Event]:
        return self.client.events

    @property
    def shown(self) -> list[MessageView]:
        return self.client.shown

    @property
    def cursors(self) -> dict[str, int]:
        return self.client.cursors

    @property
    def region(self) -> str | None:
        """The region of the current connection, or None while reconnecting."""
        return self._session.region if self._ready.is_set() else None

    @property
    def unconfirmed(self) -> list[str]:
        """Client message ids sent but not yet seen committed, oldest first."""
        return list(self._outbox)

    async def start(self, timeout_s: float = 30.0) -> HelloEvent:
        """Read the regions, then connect to the nearest one that accepts."""
        self.regions = await fetch_regions(self._edge_url)
        if not self.regions:
            raise ChatError("no_regions", f"{self._edge_url} listed no regions")
        self._supervisor = asyncio.create_task(self._supervise())
        async with asyncio.timeout(timeout_s):
            await self._ready.wait()
        assert self.client.hello is not None
        return self.client.hello

    async def close(self) -> None:
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    async def send(
        self,
        to: str | None = None,
        content: str = "",
        client_msg_id: str | None = None,
        group: str | None = None,
        timeout_s: float = 60.0,
    ) -> AcceptedEvent:
        """Send to user `to` or to `group`; return once a region accepted it.

        Retries through reconnects until `timeout_s`. A send that times out
        stays queued and is sent again after the next reconnect, so it may
        still be delivered. Errors other than `closed`, `unavailable` and
        `timeout` raise `ChatError` at once.
        """
        cmid = client_msg_id or uuid.uuid4().hex
        target = {"to": to} if group is None else {"group": group}
        frame = {"type": "send", "id": cmid, **target, "content": content}
        self._outbox[cmid] = _Outgoing(frame)
        async with asyncio.timeout(timeout_s), self._send_lock:
            return await self._send_in_order(cmid)

    async def presence(self, users: list[str]) -> list[UserPresence]:
        """Return the presence of `users`, asked on the current connection."""
        await self._ready.wait()
        return await self.client.presence(users)

    async def sync(self) -> SyncedEvent:
        """Fetch everything after the cursors on the current connection."""
        await self._ready.wait()
        return await self.client.sync(self.policy.sync_timeout_s)

    # ---- sessions ------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, hold the session until it fails or can move back, repeat."""
        lost_at = time.monotonic()
        reason = "start"
        previous: str | None = None
        while True:
            failed = None if reason in ("start", "failback", "restart") else previous
            await self._connect_somewhere(failed, first=reason == "start")
            session = self._session
            resumption = Resumption(
                from_region=previous,
                to_region=session.region or "",
                reason=reason,
                lost_at=lost_at,
                connected_at=time.monotonic(),
            )
            self.resumptions.append(resumption)
            self._spawn(self._after_connect(session, resumption))
            reason = await self._hold(session)
            lost_at = time.monotonic()
            previous = session.region
            if reason == "closed" and self.client.close_code == CLOSE_SERVICE_RESTART:
                reason = "restart"
            self._fail(session, reason)
            log.info(
                "failover.session_lost",
                region=session.region,
                reason=session.lost_reason,
                generation=session.generation,
            )

    async def _connect_somewhere(self, failed: str | None, first: bool) -> None:
        """Try the regions in order until one connects, backing off between tries."""
        attempt = 0 if first else 1
        while True:
            for region in self._candidates(failed):
                await asyncio.sleep(self._backoff_s(attempt))
                attempt += 1
                if await self._connect_region(region):
                    return

    def _candidates(self, failed: str | None) -> list[RegionEndpoints]:
        """Return the regions nearest first, with the failed one moved last."""
        others = [r for r in self.regions if r.name != failed]
        return others + [r for r in self.regions if r.name == failed]

    def _backoff_s(self, attempt: int) -> float:
        """Full jitter: a uniform delay up to an exponentially growing cap."""
        if attempt == 0:
            return 0.0
        policy = self.policy
        cap = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (attempt - 1))
        return random.uniform(0.0, cap)

    async def _connect_region(self, region: RegionEndpoints) -> bool:
        known = self._edge_in_region.get(region.name)
        urls = ([known] if known else []) + [e.url for e in region.edges]
        for url in dict.fromkeys(urls):
            try:
                async with asyncio.timeout(self.policy.connect_timeout_s):
                    hello = await self.client.connect(url)
            except (
                ChatError,
                OSError,
                TimeoutError,
                websockets.InvalidHandshake,
                websockets.ConnectionClosed,
            ) as exc:
                log.info(
                    "failover.connect_failed",
                    region=region.name,
                    url=url,
                    error=repr(exc),
                )
                continue
            self._edge_in_region[region.name] = self.client.url
            self._session = _Session(
                generation=self._session.generation + 1, region=region.name
            )
            self._ready.set()
            log.info(
                "failover.connected",
                user=hello.user,
                region=region.name,
                edge=hello.edge,
                generation=self._session.generation,
            )
            return True
        return False

    async def _after_connect(self, session: _Session, resumption: Resumption) -> None:
        """Sync from the cursors, then resend what is not yet committed.

        A failed sync (the region may be cut off from the core) is retried
        with backoff while the session lasts; sends go on meanwhile.
        """
        attempt = 0
        while not session.lost.is_set():
            try:
                await self.client.sync(self.policy.sync_timeout_s)
            except (ChatError, TimeoutError) as exc:
                attempt += 1
                log.info("failover.sync_retry", attempt=attempt, error=repr(exc))
                await asyncio.sleep(self._backoff_s(attempt))
                continue
            resumption.synced_at = time.monotonic()
            break
        async with self._send_lock:
            if session is self._session and not session.lost.is_set():
                with contextlib.suppress(_SendFailed):
                    await self._resend_older(None, session)

    async def _hold(self, session: _Session) -> str:
        """Wait until the session is lost or the nearest region is back; return why."""
        watchers = [asyncio.create_task(self._wait_lost(session))]
        nearest = self.regions[0].name
        if session.region != nearest:
            watchers.append(asyncio.create_task(self._probe_nearest(nearest)))
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for watcher in watchers:
                watcher.cancel()
        finished = next(iter(done))
        error = finished.exception()
        if error is not None:
            # A failed probe must not stop the client from reconnecting.
            log.error("failover.watch_failed", error=repr(error))
            return "error"
        return finished.result()

    async def _wait_lost(self, session: _Session) -> str:
        closed = asyncio.create_task(self.client.closed.wait())
        lost = asyncio.create_task(session.lost.wait())
        try:
            await asyncio.wait([closed, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            lost.cancel()
        return session.lost_reason or "closed"

    async def _probe_nearest(self, nearest: str) -> str:
        """Return "failback" once the nearest region passed enough health checks."""
        interval_s = self.policy.probe_interval_s
        # Each failed move back doubles the wait, so a region that passes its
        # health check but cannot serve the session is not retried too often.
        failbacks = sum(
            1
            for r in self.resumptions[-8:]
            if r.reason == "failback" and r.to_region != nearest
        )
        interval_s = min(interval_s * 2**failbacks, self.policy.probe_interval_max_s)
        streak = 0
        while streak < self.policy.healthy_probes:
            await asyncio.sleep(interval_s)
            streak = streak + 1 if await self._healthy(nearest) else 0
        log.info("failover.nearest_recovered", region=nearest)
        return "failback"

    async def _healthy(self, region_name: str) -> bool:
        region = next(r for r in self.regions if r.name == region_name)
        known = self._edge_in_region.get(region_name)
        health_url = region.edges[0].health_url
        if known is not None:
            health_url = http_base(known) + "/healthz"
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                return (await client.get(health_url)).status_code == 200
        except httpx.HTTPError:
            return False

    def _fail(self, session: _Session, reason: str) -> None:
        """Give up on `session`; the supervisor connects to the next region."""
        if session.lost.is_set():
            return
        session.lost_reason = reason
        session.lost.set()
        if session is self._session:
            self._ready.clear()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- sends ---------------------------------------------------------------

    async def _send_in_order(self, cmid: str) -> AcceptedEvent:
        """Send `cmid` after resending older unconfirmed messages; call under lock."""
        unavailable = 0
        while True:
            await self._ready.wait()
            session = self._session
            try:
                await self._resend_older(cmid, session)
                return await self._send_once(cmid, session)
            except _SendFailed as failure:
                if failure.code != "unavailable":
                    self._fail(session, failure.code)
                    continue
                unavailable += 1
                if unavailable >= self.policy.unavailable_limit:
                    unavailable = 0
                    self._fail(session, "unavailable")
                    continue
                await asyncio.sleep(self._backoff_s(unavailable))

    async def _resend_older(self, until: str | None, session: _Session) -> None:
        """Send again what this session has not accepted yet, older than `until`."""
        for cmid, outgoing in list(self._outbox.items()):
            if cmid == until:
                return
            if outgoing.accepted_on == session.generation:
                continue
            try:
                await self._send_once(cmid, session)
            except ChatError as exc:
                log.info("failover.resend_rejected", client_msg_id=cmid, code=exc.code)

    async def _send_once(self, cmid: str, session: _Session) -> AcceptedEvent:
        outgoing = self._outbox.get(cmid)
        if outgoing is None:
            # Seen committed while this send was retried: it was accepted.
            return AcceptedEvent(id=cmid, duplicate=True)
        frame = outgoing.frame
        content = frame["content"]
        try:
            if "group" in frame:
                accepted = await self.client.send_to_group(
                    frame["group"], content, cmid, self.policy.send_timeout_s
                )
            else:
                accepted = await self.client.send(
                    frame["to"], content, cmid, self.policy.send_timeout_s
                )
        except TimeoutError as exc:
            raise _SendFailed("timeout") from exc
        except ChatError as exc:
            if exc.code in RETRYABLE_CODES:
                raise _SendFailed(exc.code) from exc
            self._outbox.pop(cmid, None)
            raise
        outgoing.accepted_on = session.generation
        return accepted

    def _on_event(self, event: Event) -> None:
        """Forget outgoing messages once they are seen committed or rejected."""
        if isinstance(event, CommittedEvent):
            self._outbox.pop(event.id, None)
        elif isinstance(event, MessageEvent):
            hello = self.client.hello
            if hello is not None and event.message.sender == hello.user:
                self._outbox.pop(event.message.client_msg_id, None)
        elif (
            isinstance(event, ErrorEvent)
            and event.ref in self._outbox
            and event.code not in RETRYABLE_CODES
        ):
            self._outbox.pop(event.ref, None)
