"""Accept client messages: validate, then store them in the region's JetStream.

A message is acknowledged to its sender ("accepted") only after the leaf
node's JetStream has stored the batch that carries it, and the leaf fsyncs
every write, so an accepted message survives the loss of every process of
the region. `edge.batcher` gathers the messages of all connections into
batches, one JetStream write each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from core import subjects
from core.errors import (
    ClientError,
    InvalidRecipient,
    NotAMember,
    Unavailable,
    UnknownRecipient,
)
from core.metrics import EdgeMetrics
from core.schema import AcceptedEvent, IngestEnvelope, Origin, SendFrame
from edge.batcher import IngestBatcher, RecentIds
from edge.core_client import CoreClient
from edge.frames import check_content
from edge.uncommitted import UncommittedPosts
from topology.model import Ingest as IngestSettings

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 5.0


class Ingest:
    """Validate and accept messages sent by this edge's clients."""

    def __init__(
        self,
        js: JetStreamContext,
        core: CoreClient,
        region: str,
        edge: str,
        max_content_bytes: int,
        settings: IngestSettings,
        metrics: EdgeMetrics,
        leaf_connected: Callable[[], bool] = lambda: True,
        uncommitted: UncommittedPosts | None = None,
    ) -> None:
        self._js = js
        self._metrics = metrics
        self._batcher = IngestBatcher(edge, self._publish, settings, metrics)
        self._recent = RecentIds()
        self._leaf_connected = leaf_connected
        self._core = core
        self._region = region
        self._edge = edge
        self._subject = subjects.ingest_subject(region, edge)
        self._max_content_bytes = max_content_bytes
        self._uncommitted = uncommitted or UncommittedPosts()

    async def accept(
        self, sender: str, connection: str, frame: SendFrame
    ) -> AcceptedEvent:
        """Validate and store `frame`; raise a `ClientError` if it is rejected."""
        return await (await self.enqueue(sender, connection, frame))

    async def enqueue(
        self, sender: str, connection: str, frame: SendFrame
    ) -> Awaitable[AcceptedEvent]:
        """Validate `frame` and add it to the open batch; return its acceptance.

        Raises a `ClientError` for an invalid frame. The returned awaitable
        yields the `accepted` event once the batch is stored, or raises
        `Unavailable`. Messages enter the stream in the order of `enqueue`
        calls, so a connection that awaits each `enqueue` keeps its order.
        """
        check_content(frame, self._max_content_bytes)
        if frame.group is not None:
            await self._check_group(sender, frame.group, frame.id)
        else:
            await self._check_recipient(sender, frame.to or "", frame.id)
        if not self._leaf_connected():
            # Fail at once: a publish would wait out its whole timeout.
            raise Unavailable(
                "this edge cannot reach its region's leaf node; resend the "
                "message with the same id, here later or in another region",
                ref=frame.id,
            )
        key = f"{sender}:{frame.id}"
        earlier = self._recent.lookup(key)
        if earlier is not None:
            return self._duplicate(earlier, frame.id)
        envelope = IngestEnvelope(
            sender=sender,
            recipient=frame.to,
            group=frame.group,
            client_msg_id=frame.id,
            content=frame.content,
            accepted_at_ms=time.time_ns() // 1_000_000,
            origin=Origin(region=self._region, edge=self._edge, connection=connection),
        )
        pending = self._recent.start(key)
        stored = self._batcher.add(envelope.model_dump_json().encode())
        if frame.group is not None:
            self._uncommitted.add(sender, frame.group, frame.id)
        return self._settle(key, pending, stored, frame.id, sender)

    async def close(self) -> None:
        """Store the open batch and wait for the batches in flight."""
        await self._batcher.close()

    async def _settle(
        self,
        key: str,
        pending: asyncio.Future[None],
        stored: asyncio.Future[None],
        ref: str,
        sender: str,
    ) -> AcceptedEvent:
        try:
            await stored
        except Exception as exc:
            self._recent.finish(key, pending, exc)
            self._uncommitted.settle(sender, ref)
            raise _unavailable(ref) from exc
        self._recent.finish(key, pending, None)
        self._metrics.accepted.inc()
        log.debug("ingest.accepted", client_msg_id=ref)
        return AcceptedEvent(id=ref, duplicate=False)

    async def _duplicate(
        self, earlier: asyncio.Future[None], ref: str
    ) -> AcceptedEvent:
        """Wait for an earlier send of the same id that may still be in flight."""
        try:
            await asyncio.shield(earlier)
        except Exception as exc:
            raise _unavailable(ref) from exc
        return AcceptedEvent(id=ref, duplicate=True)

    async def _check_recipient(self, sender: str, to: str, ref: str) -> None:
        if to == sender:
            raise InvalidRecipient("you cannot send a message to yourself", ref=ref)
        if not await self._core.user_exists(to):
            raise UnknownRecipient(f"no user named {to!r}", ref=ref)

    async def _check_group(self, sender: str, group: str, ref: str) -> None:
        try:
            allowed = await self._core.can_post(sender, group)
        except ClientError as exc:
            exc.ref = ref
            raise
        if not allowed:
            raise NotAMember(f"you are not a member of group {group!r}", ref=ref)

    async def _publish(self, payload: bytes, batch_id: str) -> PubAck:
        try:
            return await self._js.publish(
                self._subject,
                payload,
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": batch_id},
            )
        except (NatsTimeoutError, NoRespondersError, TimeoutError, APIError) as exc:
            log.warning("ingest.publish_failed", batch_id=batch_id, error=repr(exc))
            raise


def _unavailable(ref: str) -> Unavailable:
    return Unavailable(
        "the region could not store the message; resend it with the same id",
        ref=ref,
    )
