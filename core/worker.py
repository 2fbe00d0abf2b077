"""The core worker process: sequencer, session registry and core services.

It connects to the hub, consumes the hub's `INGEST` stream, and answers the
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
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from pydantic import BaseModel, ValidationError

from core import subjects
from core.catchup import fetch_sync_page
from core.errors import ClientError
from core.groups import GroupService
from core.ids import MessageIdGenerator, UserId
from core.natsconn import NatsAuth, close_nats, connect_nats
from core.presence import PresenceService
from core.schema import (
    Delivery,
    GroupRequest,
    IngestEnvelope,
    PresenceReport,
    PresenceRequest,
    ServiceError,
    SessionOpen,
    SyncRequest,
    UserReply,
    UserRequest,
)
from core.sequencer import Sequencer
from core.sessions import SessionRegistry
from core.store.base import MessageStore
from core.store.factory import open_store
from sync.streams import ensure_mesh_streams
from topology.model import Topology
from topology.render import hub_client_urls

log = structlog.get_logger(__name__)

FETCH_BATCH = 256
FETCH_TIMEOUT_S = 1.0
ACK_WAIT_S = 30.0
STARTUP_RETRY_S = 0.5
SERVICE_QUEUE = "core"
PUBLISH_TIMEOUT_S = 2.0
PUBLISH_ATTEMPTS = 8


class CoreWorker:
    """One core worker; `start()` returns once it serves, `stop()` drains it."""

    def __init__(
        self,
        topology: Topology,
        worker_id: int,
        base_dir: Path,
        auth: NatsAuth | None = None,
    ) -> None:
        self._topology = topology
        self._auth = auth
        self._worker_id = worker_id
        self._regions = [r.name for r in topology.regions]
        self._store: MessageStore = open_store(
            topology.store, topology.regions, topology.regions[0].name, base_dir
        )
        self._registry = SessionRegistry(
            self._regions, topology.presence.offline_timeout_s
        )
        self._sequencer = Sequencer(
            self._store,
            self._registry,
            MessageIdGenerator(worker_id),
            self._publish_delivery,
        )
        self._groups = GroupService(
            self._store, self._sequencer, topology.limits.group_size_limit
        )
        self._presence = PresenceService(self._store, self._registry, self._sequencer)
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
            asyncio.create_task(self._consume(self._sequencer)),
            asyncio.create_task(
                self._presence.publish_changes_forever(self._nc, interval_s)
            ),
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

    async def _publish_delivery(self, region: str, delivery: Delivery) -> None:
        """Publish to the hub's delivery stream, retrying while the hub recovers."""
        assert self._js is not None
        if delivery.message is not None:
            msg_id = f"{region}:{delivery.message.message_id}"
        else:
            assert delivery.rejection is not None
            msg_id = f"{region}:rejected:{delivery.rejection.client_msg_id}"
        payload = delivery.model_dump_json().encode()
        delay_s = STARTUP_RETRY_S
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._js.publish(
                    subjects.deliver_subject(region),
                    payload,
                    timeout=PUBLISH_TIMEOUT_S,
                    headers={"Nats-Msg-Id": msg_id},
                )
                return
            except Exception as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                log.warning(
                    "core.delivery_retry",
                    region=region,
                    attempt=attempt,
                    error=repr(exc),
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    # ---- sequencer loop ------------------------------------------------------

    async def _consume(self, sequencer: Sequencer) -> None:
        assert self._js is not None
        config = ConsumerConfig(
            durable_name=subjects.SEQUENCER_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=FETCH_BATCH * 4,
        )
        sub = await self._pull_subscribe(config)
        log.info("core.consuming", stream=subjects.HUB_INGEST_STREAM)
        while True:
            try:
                batch = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except (FetchTimeoutError, TimeoutError):
                continue
            except Exception:
                log.exception("core.fetch_failed")
                await asyncio.sleep(STARTUP_RETRY_S)
                continue
            for msg in batch:
                await self._process(sequencer, msg)

    async def _pull_subscribe(
        self, config: ConsumerConfig
    ) -> JetStreamContext.PullSubscription:
        assert self._js is not None
        while True:
            try:
                return await self._js.pull_subscribe(
                    "chatmesh.ingest.>",
                    durable=subjects.SEQUENCER_CONSUMER,
                    stream=subjects.HUB_INGEST_STREAM,
                    config=config,
                )
            except Exception as exc:
                log.warning("core.consumer_retry", error=repr(exc))
                await asyncio.sleep(STARTUP_RETRY_S)

    async def _process(self, sequencer: Sequencer, msg: Msg) -> None:
        try:
            envelope = IngestEnvelope.model_validate_json(msg.data)
        except ValidationError as exc:
            # Edges validate before they accept, so this is a bug or tampering.
            log.error("core.poison_message", subject=msg.subject, error=str(exc))
            await msg.term()
            return
        origin = envelope.origin
        if msg.subject != subjects.ingest_subject(origin.region, origin.edge):
            # Each edge may publish only its own ingest subject, so the subject
            # names the edge that accepted the message; the body must agree.
            log.error(
                "core.origin_mismatch",
                subject=msg.subject,
                region=origin.region,
                edge=origin.edge,
                sender=envelope.sender,
            )
            await msg.term()
            return
        try:
            await sequencer.handle(envelope)
        except ValueError as exc:
            # The store refused the content itself: retrying cannot help.
            log.error("core.invalid_message", sender=envelope.sender, error=str(exc))
            await msg.term()
            return
        except Exception:
            log.exception("core.handle_failed", sender=envelope.sender)
            await msg.nak(delay=1.0)
            return
        await msg.ack()

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
            self._registry.on_report(PresenceReport.model_validate_json(msg.data))
        except ValidationError as exc:
            log.warning("core.bad_presence_report", error=str(exc))

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
