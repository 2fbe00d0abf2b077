"""The sequencer's read loop: fetch INGEST, commit, route, then ack.

Committing and routing run as two stages. While the deliveries of one
fetched batch wait for the hub's acks, the next batch is already being
committed, so the store write and the publish round trips overlap. Each
stream message is acked only after every client message in it is stored
and routed. A failure naks it. Its redelivery finds the messages stored
under their (sender, client id) keys and routes them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError, NotFoundError
from pydantic import ValidationError

from core import subjects
from core.metrics import CoreMetrics
from core.schema import IngestBatch, IngestEnvelope
from core.sequencer import Outcome, Sequencer

log = structlog.get_logger(__name__)

FETCH_BATCH = 256
FETCH_TIMEOUT_S = 1.0
ACK_WAIT_S = 30.0
RETRY_S = 0.5
NAK_DELAY_S = 1.0
# Client messages per sequencer commit: one store write each.
COMMIT_BATCH = 512
# Committed batches waiting for their routing; a full queue pauses commits.
ROUTE_QUEUE = 2


@dataclass
class _Committed:
    """A fetched batch whose messages are stored and now wait to be routed."""

    msgs: list[Msg]
    envelopes: list[IngestEnvelope]
    outcomes: list[Outcome]


class IngestConsumer:
    """Run the durable `sequencer` consumer of the hub's INGEST until cancelled."""

    def __init__(
        self, js: JetStreamContext, sequencer: Sequencer, metrics: CoreMetrics
    ) -> None:
        self._js = js
        self._sequencer = sequencer
        self._metrics = metrics
        self._routes: asyncio.Queue[_Committed] = asyncio.Queue(ROUTE_QUEUE)

    async def run(self) -> None:
        router = asyncio.create_task(self._route_forever())
        try:
            await self._commit_forever()
        finally:
            router.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await router

    async def _commit_forever(self) -> None:
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
                self._metrics.errors.labels(kind="fetch_failed").inc()
                await asyncio.sleep(RETRY_S)
                continue
            committed = await self._commit(batch)
            if committed is not None:
                await self._routes.put(committed)

    async def _pull_subscribe(
        self, config: ConsumerConfig
    ) -> JetStreamContext.PullSubscription:
        while True:
            try:
                config = await self._rewind_consumer(config)
                return await self._js.pull_subscribe(
                    "chatmesh.ingest.>",
                    durable=subjects.SEQUENCER_CONSUMER,
                    stream=subjects.HUB_INGEST_STREAM,
                    config=config,
                )
            except Exception as exc:
                log.warning("core.consumer_retry", error=repr(exc))
                await asyncio.sleep(RETRY_S)

    async def _rewind_consumer(self, config: ConsumerConfig) -> ConsumerConfig:
        """Return the consumer config to bind with, restarting it at its ack floor.

        A worker that died leaves messages delivered to it but not acked.
        JetStream would redeliver them only after `ack_wait`, after messages
        that came later in the stream, and the sequencer would then commit a
        sender's messages out of their order. So when messages are pending,
        the durable consumer is deleted and created again to start right
        after the last message acked. Messages acked above the floor are
        delivered again and are no-ops for the sequencer.
        """
        stream, durable = subjects.HUB_INGEST_STREAM, subjects.SEQUENCER_CONSUMER
        try:
            info = await self._js.consumer_info(stream, durable)
        except NotFoundError:
            return config
        if not info.num_ack_pending:
            return config
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        log.warning(
            "core.consumer_rewind",
            pending=info.num_ack_pending,
            ack_floor=floor,
            delivered=info.delivered.stream_seq if info.delivered else None,
        )
        await self._js.delete_consumer(stream, durable)
        return ConsumerConfig(
            durable_name=durable,
            ack_policy=config.ack_policy,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=floor + 1,
            ack_wait=config.ack_wait,
            max_ack_pending=config.max_ack_pending,
        )

    async def _commit(self, msgs: list[Msg]) -> _Committed | None:
        """Store every client message of the fetched stream messages."""
        envelopes: list[IngestEnvelope] = []
        valid: list[Msg] = []
        for msg in msgs:
            unpacked = self._unpack(msg)
            if unpacked is None:
                await msg.term()
                continue
            envelopes += unpacked
            valid.append(msg)
        self._observe_receipt(envelopes)
        outcomes: list[Outcome] = []
        try:
            for start in range(0, len(envelopes), COMMIT_BATCH):
                chunk = envelopes[start : start + COMMIT_BATCH]
                outcomes += await self._sequencer.commit_batch(chunk)
        except Exception:
            log.exception("core.handle_failed", messages=len(envelopes))
            self._metrics.errors.labels(kind="handle_failed").inc()
            await _nak(valid)
            return None
        return _Committed(valid, envelopes, outcomes)

    async def _route_forever(self) -> None:
        while True:
            committed = await self._routes.get()
            try:
                await self._sequencer.route_batch(
                    committed.envelopes, committed.outcomes
                )
            except Exception:
                log.exception("core.route_failed", messages=len(committed.envelopes))
                self._metrics.errors.labels(kind="route_failed").inc()
                await _nak(committed.msgs)
                continue
            for msg in committed.msgs:
                await msg.ack()

    def _unpack(self, msg: Msg) -> list[IngestEnvelope] | None:
        """Return the client messages of one stream message, or None if invalid.

        Edges store `IngestBatch`es; a single `IngestEnvelope` is what edges
        stored before they batched, and may still wait in the stream. Each
        edge may publish only its own ingest subject, so the subject names
        the edge that accepted the messages, and every envelope must agree.
        """
        envelopes = self._parse(msg)
        if envelopes is None:
            return None
        for envelope in envelopes:
            origin = envelope.origin
            if msg.subject != subjects.ingest_subject(origin.region, origin.edge):
                log.error(
                    "core.origin_mismatch",
                    subject=msg.subject,
                    region=origin.region,
                    edge=origin.edge,
                    sender=envelope.sender,
                )
                self._metrics.errors.labels(kind="origin_mismatch").inc()
                return None
        return envelopes

    def _parse(self, msg: Msg) -> list[IngestEnvelope] | None:
        try:
            return list(IngestBatch.model_validate_json(msg.data).envelopes)
        except ValidationError as batch_error:
            try:
                return [IngestEnvelope.model_validate_json(msg.data)]
            except ValidationError:
                pass
            # Edges validate before they accept, so this is a bug or tampering.
            log.error(
                "core.poison_message", subject=msg.subject, error=str(batch_error)
            )
            self._metrics.errors.labels(kind="poison_message").inc()
            return None

    def _observe_receipt(self, envelopes: list[IngestEnvelope]) -> None:
        now_ms = time.time_ns() / 1_000_000
        self._metrics.received.inc(len(envelopes))
        for envelope in envelopes:
            self._metrics.edge_to_core_seconds.observe(
                max(0.0, now_ms - envelope.accepted_at_ms) / 1000
            )


async def _nak(msgs: list[Msg]) -> None:
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak(delay=NAK_DELAY_S)
