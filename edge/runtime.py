"""The edge's long-lived state: its NATS link, streams, sessions and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from core import subjects
from core.metrics import EdgeMetrics
from core.natsconn import NatsAuth, close_nats, connect_nats
from core.tokens import PublicKeys, SigningKey
from edge.affinity import owner_edge
from edge.core_client import CoreClient
from edge.deliveries import DeliveryFanout
from edge.ingest import Ingest
from edge.limits import EdgeLimits
from edge.presence import (
    FullReportRequests,
    PresenceFanout,
    report_presence_forever,
)
from edge.sessions import LocalSessions
from edge.uncommitted import UncommittedPosts
from sync.streams import ensure_region_streams, region_deliver_config
from sync.watchdog import SourceWatchdog
from topology.model import Edge, Region, Topology
from topology.render import leaf_client_url

log = structlog.get_logger(__name__)

STARTUP_RETRY_S = 0.5
DELIVERY_HEARTBEAT_S = 2.0
# How often the edge checks that the leaf still has the delivery stream it
# reads. A leaf restart loses that stream, which is kept in memory.
DELIVERY_CHECK_S = 2.0
# Failed checks are logged once and then every this many failures.
CHECK_FAILURE_LOG_EVERY = 30
# WebSocket close code 1012, "service restart": reconnect and sync.
CLOSE_SERVICE_RESTART = 1012
# WebSocket close code 1013, "try again later": this edge cannot serve.
CLOSE_TRY_AGAIN_LATER = 1013
# After this long without its leaf node, the edge closes its clients'
# connections so that they fail over to another region.
LEAF_LOSS_GRACE_S = 3.0
LEAF_CHECK_S = 0.5
HUB_PROBE_S = 1.0


@dataclass(frozen=True)
class EdgeIdentity:
    """The edge's place in the topology, its token public keys and NATS login."""

    topology: Topology
    region: Region
    edge: Edge
    token_keys: PublicKeys
    nats_auth: NatsAuth
    # Set only for a topology with dev_users: signs development tokens.
    dev_signing_key: SigningKey | None = None

    @property
    def audience(self) -> str:
        """Return the audience tokens must name: the mesh's name."""
        return self.topology.name

    def edge_url(self, name: str) -> str:
        """Return the WebSocket URL of an edge of this region."""
        for edge in self.region.edges:
            if edge.name == name:
                return f"ws://{edge.host}:{edge.port}/v1/ws"
        raise KeyError(name)

    def owner_of(self, user: str) -> str:
        return owner_edge(user, [e.name for e in self.region.edges])


class EdgeRuntime:
    """Connections to the leaf node and the background work of one edge."""

    def __init__(self, identity: EdgeIdentity) -> None:
        self.identity = identity
        self.sessions = LocalSessions()
        self.metrics = EdgeMetrics()
        self.metrics.connections.set_function(self.sessions.count)
        self.limits = EdgeLimits(identity.topology.limits)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._core: CoreClient | None = None
        self._ingest: Ingest | None = None
        self.uncommitted = UncommittedPosts()
        self.fanout = DeliveryFanout(
            self.sessions, identity.edge.name, self.metrics, self.uncommitted
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: Subscription | None = None
        self._deliveries_created: datetime.datetime | None = None
        self._check_failures = 0
        self._watchdog: SourceWatchdog | None = None
        self.ready = False

    @property
    def healthy(self) -> bool:
        """True once started and while connected to the region's leaf node."""
        return self.ready and self._nc is not None and self._nc.is_connected

    @property
    def core(self) -> CoreClient:
        assert self._core is not None, "edge runtime is not started"
        return self._core

    @property
    def ingest(self) -> Ingest:
        assert self._ingest is not None, "edge runtime is not started"
        return self._ingest

    async def start(self) -> None:
        ident = self.identity
        region, edge = ident.region.name, ident.edge.name
        log.info("edge.starting", region=region, edge=edge)
        self._nc = await connect_nats(
            [leaf_client_url(ident.topology, ident.region)],
            f"edge-{edge}",
            ident.nats_auth,
        )
        js = self._js = self._nc.jetstream(domain=region)
        await self._ensure_streams(js, region)
        self._core = CoreClient(self._nc)
        self._ingest = Ingest(
            js,
            self._core,
            region,
            edge,
            ident.topology.limits.max_content_bytes,
            ident.topology.ingest,
            self.metrics,
            leaf_connected=lambda: self._nc is not None and self._nc.is_connected,
            uncommitted=self.uncommitted,
        )
        await self._nc.subscribe(
            subjects.PRESENCE_CHANGES, cb=PresenceFanout(self.sessions).on_changes
        )
        full_requests = FullReportRequests(edge)
        await self._nc.subscribe(
            subjects.PRESENCE_FULL_REQUESTS, cb=full_requests.on_request
        )
        await self._subscribe_deliveries()
        interval_s = ident.topology.presence.report_interval_s
        self._tasks += [
            asyncio.create_task(
                report_presence_forever(
                    self._nc,
                    self.sessions,
                    region,
                    edge,
                    interval_s,
                    self.metrics,
                    full_requests,
                )
            ),
            asyncio.create_task(self._keep_deliveries_forever()),
            asyncio.create_task(self._shed_clients_without_leaf()),
        ]
        self.ready = True
        log.info("edge.started", region=region, edge=edge)

    async def stop(self) -> None:
        log.info("edge.stopping", edge=self.identity.edge.name)
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ingest is not None:
            await self._ingest.close()
        if self._nc is not None:
            await close_nats(self._nc, f"edge-{self.identity.edge.name}")
        log.info("edge.stopped", edge=self.identity.edge.name)

    async def _subscribe_deliveries(self) -> None:
        """Read the region's delivery stream from now on, with an ordered consumer."""
        assert self._js is not None
        region = self.identity.region.name
        stream = subjects.region_deliver_stream(region)
        info = await self._js.stream_info(stream)
        self._deliveries_created = info.created
        self._deliveries = await self._js.subscribe(
            subjects.deliver_subject(region),
            stream=stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            idle_heartbeat=DELIVERY_HEARTBEAT_S,
            cb=self.fanout.on_message,
        )

    async def _keep_deliveries_forever(self) -> None:
        """Recreate and read the delivery stream again whenever the leaf lost it.

        After a leaf restart the stream is new and its sequences start again
        at 1, so the old ordered consumer, which waits for the sequence after
        the last one it saw, would miss every delivery. Deliveries of the gap
        are lost to this edge, so it closes its clients' connections with
        code 1012: they reconnect and sync from their cursors. Each check
        also restarts the stream's source from the hub if it stalled.
        """
        while True:
            await asyncio.sleep(DELIVERY_CHECK_S)
            try:
                await self._check_deliveries()
            except Exception as exc:
                self._check_failures += 1
                if self._check_failures % CHECK_FAILURE_LOG_EVERY == 1:
                    log.warning(
                        "edge.deliveries_check_failed",
                        edge=self.identity.edge.name,
                        failures=self._check_failures,
                        error=repr(exc),
                    )
                continue
            if self._check_failures:
                log.info(
                    "edge.deliveries_check_recovered",
                    edge=self.identity.edge.name,
                    failures=self._check_failures,
                )
                self._check_failures = 0

    async def _check_deliveries(self) -> None:
        assert self._js is not None
        region = self.identity.region.name
        stream = subjects.region_deliver_stream(region)
        try:
            info = await self._js.stream_info(stream)
        except NotFoundError:
            log.warning("edge.deliveries_stream_missing", stream=stream)
            await ensure_region_streams(self._js, region)
            info = await self._js.stream_info(stream)
        await self._source_watchdog().check()
        if info.created == self._deliveries_created:
            return
        log.warning("edge.deliveries_resubscribing", stream=stream)
        if self._deliveries is not None:
            with contextlib.suppress(Exception):
                await self._deliveries.unsubscribe()
        await self._subscribe_deliveries()
        # Commits in the gap never reach this edge; do not wait for them.
        self.uncommitted.clear()
        closed = await self.sessions.close_all(
            CLOSE_SERVICE_RESTART, "the delivery feed restarted; reconnect and sync"
        )
        log.info("edge.deliveries_resubscribed", stream=stream, closed=closed)

    def _source_watchdog(self) -> SourceWatchdog:
        """Return the watchdog that restarts the delivery stream's stalled source."""
        if self._watchdog is None:
            assert self._js is not None and self._nc is not None
            nc = self._nc

            async def hub_reachable(stream: str) -> bool:
                hub = nc.jetstream(domain=subjects.HUB_DOMAIN, timeout=HUB_PROBE_S)
                try:
                    await hub.stream_info(stream)
                except Exception:  # Any failure means the hub is not reachable.
                    return False
                return True

            config = region_deliver_config(self.identity.region.name)
            owner = f"edge-{self.identity.edge.name}"
            self._watchdog = SourceWatchdog(self._js, config, hub_reachable, owner)
        return self._watchdog

    async def _shed_clients_without_leaf(self) -> None:
        """Close every client connection once the leaf is gone for a few seconds.

        Without its leaf node an edge can neither accept nor deliver, so its
        clients are better served by another region. Close code 1013 (try
        again later) directs them there.
        """
        lost_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LEAF_CHECK_S)
            if self.healthy:
                lost_at = None
                continue
            if lost_at is None:
                lost_at = loop.time()
                continue
            if loop.time() - lost_at < LEAF_LOSS_GRACE_S:
                continue
            closed = await self.sessions.close_all(
                CLOSE_TRY_AGAIN_LATER,
                "this edge lost its leaf node; use another region",
            )
            if closed:
                log.warning(
                    "edge.clients_shed",
                    edge=self.identity.edge.name,
                    reason="leaf unreachable",
                    closed=closed,
                )

    async def _ensure_streams(self, js: object, region: str) -> None:
        attempt = 1
        while True:
            try:
                await ensure_region_streams(js, region)  # type: ignore[arg-type]
                return
            except Exception as exc:  # JetStream may not be ready yet.
                log.warning("edge.streams_retry", attempt=attempt, error=repr(exc))
                await asyncio.sleep(STARTUP_RETRY_S)
                attempt += 1
