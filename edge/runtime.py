"""The edge's long-lived state: its NATS link, streams, sessions and tasks."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from core import subjects
from core.natsconn import NatsAuth, close_nats, connect_nats
from core.tokens import PublicKeys
from edge.affinity import owner_edge
from edge.core_client import CoreClient
from edge.deliveries import DeliveryFanout
from edge.ingest import Ingest
from edge.limits import EdgeLimits
from edge.presence import PresenceFanout, report_presence_forever
from edge.sessions import LocalSessions
from sync.streams import ensure_region_streams
from topology.model import Edge, Region, Topology
from topology.render import leaf_client_url

log = structlog.get_logger(__name__)

STARTUP_RETRY_S = 0.5
DELIVERY_HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class EdgeIdentity:
    """The edge's place in the topology, its token public keys and NATS login."""

    topology: Topology
    region: Region
    edge: Edge
    token_keys: PublicKeys
    nats_auth: NatsAuth

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
        self.limits = EdgeLimits(identity.topology.limits)
        self._nc: Client | None = None
        self._core: CoreClient | None = None
        self._ingest: Ingest | None = None
        self.fanout = DeliveryFanout(self.sessions, identity.edge.name)
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

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
        js = self._nc.jetstream(domain=region)
        await self._ensure_streams(js, region)
        self._core = CoreClient(self._nc)
        self._ingest = Ingest(
            js, self._core, region, edge, ident.topology.limits.max_content_bytes
        )
        await self._nc.subscribe(
            subjects.PRESENCE_CHANGES, cb=PresenceFanout(self.sessions).on_changes
        )
        await js.subscribe(
            subjects.deliver_subject(region),
            stream=subjects.region_deliver_stream(region),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            idle_heartbeat=DELIVERY_HEARTBEAT_S,
            cb=self.fanout.on_message,
        )
        interval_s = ident.topology.presence.report_interval_s
        self._tasks.append(
            asyncio.create_task(
                report_presence_forever(
                    self._nc, self.sessions, region, edge, interval_s
                )
            )
        )
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
        if self._nc is not None:
            await close_nats(self._nc, f"edge-{self.identity.edge.name}")
        log.info("edge.stopped", edge=self.identity.edge.name)

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
