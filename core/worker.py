"""The core worker process: sequencer, session registry and core services.

It connects to the hub, consumes the hub's `INGEST` stream, and replies to the
edges' requests (sync, user lookups, session opens) over NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from core import subjects
from core.catchup import fetch_sync_page
from core.consumer import IngestConsumer
from core.errors import ClientError
from core.groups import GroupService
from core.ids import MessageIdGenerator, UserId
from core.metrics import CoreMetrics
from core.natsconn import NatsAuth, close_nats, connect_nats
from core.presence import PresenceService
from core.schema import (
    Delivery,
    GroupRequest,
    PresenceFullRequest,
    PresenceReport,
    PresenceRequest,
    ServiceError,
    SessionOpen,
    SyncRequest,
    UserReply,
    UserRequest,
    encode_delivery_batch,
)
from core.sequencer import Sequencer
from core.sessions import SessionRegistry
from core.store.base import MessageStore
from core.store.factory import open_store
from sync.streams import ensure_mesh_streams, hub_ingest_config
from sync.watchdog import SourceWatchdog
from topology.model import Topology
from topology.render import hub_client_urls

log = structlog.get_logger(__name__)

STARTUP_RETRY_S = 0.5
SERVICE_QUEUE = "core"
PUBLISH_TIMEOUT_S = 2.0
PUBLISH_ATTEMPTS = 8
# Well under NATS's default max_payload of 1 MiB.
DELIVERY_BATCH_MAX_BYTES = 512 * 1024
# How often the worker reads the hub's stream state for the lag gauges.
LAG_POLL_INTERVAL_S = 2.0
SOURCE_CHECK_S = 2.0
PROBE_TIMEOUT_S = 1.0
# Failed source checks are logged once and then every this many failures.
CHECK_FAILURE_LOG_EVERY = 30


class CoreWorker:
    """One core worker; `start()` returns once it serves, `stop()` drains it."""

    def __init__(
        self,
        topology: Topology,
        worker_id: int,
        base_dir: Path,
        metrics: CoreMetrics,
        auth: NatsAuth | None = None,
    ) -> None:
        self._topology = topology
        self._metrics = metrics
        self._auth = auth
        self._worker_id = worker_id
        self._regions = [r.name for r in topology.regions]
        self._store: MessageStore = open_store(
            topology.store, topology.regions, topology.core_store_region, base_dir
        )
        self._registry = SessionRegistry(
            self._regions,
            topology.presence.offline_timeout_s,
            full_request_interval_s=2 * topology.presence.report_interval_s,
        )
        self._sequencer = Sequencer(
            self._store,
            self._registry,
            MessageIdGenerator(worker_id),
            self._publish_delivery,
            metrics,
        )
        self._groups = GroupService(
            self._store, self._sequencer, topology.limits.group_size_limit
        )
        self._presence = PresenceService(
            self._store, self._registry, self._sequencer, metrics
        )
        metrics.online_users.set_function(self._registry.online_count)
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        log.info("core.starting", worker=self._worker_id)
        await self._store.ensure_schema()
        for user in self._topology.dev_users:
            await self._store.register_user(UserId(user))
        self._nc = await connect_nats(
            hub_client_urls(self._topology), f"core-{self._worker_id}", self._auth
        )
        self._js = self._nc.jetstream(domain=subjects.HUB_DOMAIN)
        await self._ensure_streams()
        await self._subscribe_services(self._nc)
        interval_s = self._topology.presence.report_interval_s
        self._tasks += [
            asyncio.create_task(
                IngestConsumer(self._js, self._sequencer, self._metrics).run()
            ),
            asyncio.create_task(
                self._presence.publish_changes_forever(self._nc, interval_s)
            ),
            asyncio.create_task(self._poll_lag_forever()),
            asyncio.create_task(self._watch_sources_forever()),
        ]
        self.ready.set()
        log.info("core.started", worker=self._worker_id)

    async def stop(self) -> None:
        log.info("core.stopping", worker=self._worker_id)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._nc is not None:
            await close_nats(self._nc, f"core-{self._worker_id}")
        await self._store.close()
        log.info("core.stopped", worker=self._worker_id)

    async def _ensure_streams(self) -> None:
        assert self._js is not None
        attempt = 1
        while True:
            try:
                assert self._nc is not None
                await ensure_mesh_streams(
                    self._js,
                    {
                        r: self._nc.jetstream(domain=r, timeout=2.0)
                        for r in self._regions
                    },
                    self._topology.hub.stream_replicas,
                )
                return
            except Exception as exc:  # JetStream may still be electing a leader.
                log.warning("core.streams_retry", attempt=attempt, error=repr(exc))
                await asyncio.sleep(STARTUP_RETRY_S)
                attempt += 1

    async def _watch_sources_forever(self) -> None:
        """Restart the hub INGEST stream's sources that stalled after an outage."""
        assert self._js is not None and self._nc is not None
        nc = self._nc
        config = hub_ingest_config(self._regions, self._topology.hub.stream_replicas)
        regions = {subjects.region_ingest_stream(r): r for r in self._regions}

        async def leaf_reachable(stream: str) -> bool:
            js = nc.jetstream(domain=regions[stream], timeout=PROBE_TIMEOUT_S)
            try:
                await js.stream_info(stream)
            except Exception:  # Any failure means the leaf is not reachable.
                return False
            return True

        watchdog = SourceWatchdog(
            self._js, config, leaf_reachable, f"core-{self._worker_id}"
        )
        failures = 0
        while True:
            await asyncio.sleep(SOURCE_CHECK_S)
            try:
                await watchdog.check()
            except Exception as exc:
                failures += 1
                if failures % CHECK_FAILURE_LOG_EVERY == 1:
                    log.warning(
                        "core.source_check_failed", failures=failures, error=repr(exc)
                    )
                continue
            failures = 0

    async def _subscribe_services(self, nc: Client) -> None:
        q = SERVICE_QUEUE
        await nc.subscribe(subjects.SERVICE_SYNC, queue=q, cb=self._on_sync)
        await nc.subscribe(
            subjects.SERVICE_USER_EXISTS, queue=q, cb=self._on_user_exists
        )
        await nc.subscribe(
            subjects.SERVICE_USER_REGISTER, queue=q, cb=self._on_register
        )
        await nc.subscribe(subjects.SERVICE_HEALTH, queue=q, cb=self._on_health)
        await nc.subscribe(subjects.SERVICE_GROUPS, queue=q, cb=self._on_groups)
        await nc.subscribe(subjects.SERVICE_PRESENCE, queue=q, cb=self._on_presence)
        # Every worker keeps its own registry, so these are not queue groups.
        await nc.subscribe(subjects.SERVICE_SESSION_OPEN, cb=self._on_session_open)
        await nc.subscribe(subjects.PRESENCE_REPORTS, cb=self._on_presence_report)

    async def _publish_delivery(self, region: str, deliveries: list[Delivery]) -> None:
        """Publish deliveries to the hub's delivery stream, in order.

        They travel as `DeliveryBatch` messages of at most
        `DELIVERY_BATCH_MAX_BYTES` each (a single larger delivery travels
        alone), because NATS refuses messages over its max_payload (1 MiB
        by default).
        """
        chunk: list[bytes] = []
        first = 0
        size = 0
        for index, delivery in enumerate(deliveries):
            encoded = delivery.model_dump_json().encode()
            if chunk and size + len(encoded) > DELIVERY_BATCH_MAX_BYTES:
                await self._publish_chunk(region, deliveries[first:index], chunk)
                chunk, first, size = [], index, 0
            chunk.append(encoded)
            size += len(encoded)
        if chunk:
            await self._publish_chunk(region, deliveries[first:], chunk)

    async def _publish_chunk(
        self, region: str, deliveries: list[Delivery], encoded: list[bytes]
    ) -> None:
        """Publish one delivery batch, retrying while the hub recovers.

        The `Nats-Msg-Id` names the first and last delivery and the count, so
        the hub stores a retried publish once. A replay after a crash may
        group deliveries differently and repeat some, and clients drop the
        repeats by their cursors.
        """
        assert self._js is not None
        msg_id = (
            f"{region}:{_delivery_key(deliveries[0])}:"
            f"{_delivery_key(deliveries[-1])}:{len(deliveries)}"
        )
        payload = encode_delivery_batch(encoded)
        delay_s = STARTUP_RETRY_S
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._js.publish(
                    subjects.deliver_subject(region),
                    payload,
                    timeout=PUBLISH_TIMEOUT_S,
                    headers={"Nats-Msg-Id": msg_id},
                )
                self._metrics.deliveries.labels(region=region).inc(len(deliveries))
                return
            except Exception as exc:
                self._metrics.errors.labels(kind="delivery_publish_failed").inc()
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                log.warning(
                    "core.delivery_retry",
                    region=region,
                    attempt=attempt,
                    bytes=len(payload),
                    error=repr(exc),
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    # ---- lag -----------------------------------------------------------------

    async def _poll_lag_forever(self) -> None:
        """Keep the sync-lag and pending gauges current until cancelled."""
        while True:
            try:
                await self._poll_lag()
            except Exception as exc:
                log.warning("core.lag_poll_failed", error=repr(exc))
                self._metrics.errors.labels(kind="lag_poll_failed").inc()
            await asyncio.sleep(LAG_POLL_INTERVAL_S)

    async def _poll_lag(self) -> None:
        assert self._js is not None
        info = await self._js.stream_info(subjects.HUB_INGEST_STREAM)
        by_stream = {s.name: s for s in info.sources or []}
        for region in self._regions:
            source = by_stream.get(subjects.region_ingest_stream(region))
            if source is not None and source.lag is not None:
                self._metrics.sync_lag.labels(region=region).set(source.lag)
        try:
            consumer = await self._js.consumer_info(
                subjects.HUB_INGEST_STREAM, subjects.SEQUENCER_CONSUMER
            )
        except NotFoundError:
            return  # The consume task creates the consumer a moment after start.
        pending = (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
        self._metrics.pending.set(pending)

    # ---- services ------------------------------------------------------------

    async def _on_sync(self, msg: Msg) -> None:
        async def answer() -> BaseModel:
            request = SyncRequest.model_validate_json(msg.data)
            return await fetch_sync_page(self._store, request)

        await _respond(msg, "sync", answer)

    async def _on_groups(self, msg: Msg) -> None:
        async def answer() -> BaseModel:
            return await self._groups.handle(GroupRequest.model_validate_json(msg.data))

        await _respond(msg, "groups", answer)

    async def _on_presence(self, msg: Msg) -> None:
        async def answer() -> BaseModel:
            request = PresenceRequest.model_validate_json(msg.data)
            return await self._presence.query(request)

        await _respond(msg, "presence", answer)

    async def _on_user_exists(self, msg: Msg) -> None:
        await self._answer_user(msg, register=False)

    async def _on_register(self, msg: Msg) -> None:
        await self._answer_user(msg, register=True)

    async def _answer_user(self, msg: Msg, register: bool) -> None:
        async def answer() -> BaseModel:
            user = UserId(UserRequest.model_validate_json(msg.data).user)
            if register:
                await self._store.register_user(user)
            exists = register or await self._store.user_exists(user)
            return UserReply(user=user, exists=exists)

        await _respond(msg, "users", answer)

    async def _on_session_open(self, msg: Msg) -> None:
        try:
            self._registry.on_open(SessionOpen.model_validate_json(msg.data))
        except ValidationError as exc:
            log.warning("core.bad_session_open", error=str(exc))
        if msg.reply:
            await msg.respond(b"{}")

    async def _on_presence_report(self, msg: Msg) -> None:
        try:
            report = PresenceReport.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("core.bad_presence_report", error=str(exc))
            self._metrics.errors.labels(kind="bad_presence_report").inc()
            return
        self._metrics.presence_reports.inc()
        if self._registry.on_report(report):
            log.info("core.full_report_requested", edge=report.edge)
            request = PresenceFullRequest(edges=[report.edge])
            assert self._nc is not None
            await self._nc.publish(
                subjects.PRESENCE_FULL_REQUESTS, request.model_dump_json().encode()
            )

    async def _on_health(self, msg: Msg) -> None:
        status = b'{"status":"ok"}' if self.ready.is_set() else b'{"status":"starting"}'
        await msg.respond(status)


async def _respond(
    msg: Msg, service: str, answer: Callable[[], Awaitable[BaseModel]]
) -> None:
    """Reply with `answer()`, or with a `ServiceError` carrying the error code."""
    try:
        reply: BaseModel = await answer()
    except ClientError as exc:
        log.info(
            "core.request_rejected", service=service, code=exc.code, reason=exc.message
        )
        reply = ServiceError(error=exc.message, code=exc.code)
    except ValidationError as exc:
        log.warning("core.bad_request", service=service, error=str(exc))
        reply = ServiceError(error=f"invalid request: {exc}", code="invalid_request")
    except Exception as exc:
        log.exception("core.request_failed", service=service)
        reply = ServiceError(error=f"{type(exc).__name__}: {exc}")
    await msg.respond(reply.model_dump_json().encode())


def _delivery_key(delivery: Delivery) -> str:
    if delivery.message is not None:
        return str(delivery.message.message_id)
    assert delivery.rejection is not None
    return f"rejected-{delivery.rejection.client_msg_id}"
