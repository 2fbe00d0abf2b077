"""Accept client messages: validate, then store them in the region's JetStream.

A message is acknowledged to its sender ("accepted") only after the leaf
node's JetStream has stored it, and the leaf fsyncs every write, so an
accepted message survives the loss of every process of the region.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
from core.schema import AcceptedEvent, IngestEnvelope, Origin, SendFrame
from edge.core_client import CoreClient
from edge.frames import check_content

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
        leaf_connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._js = js
        self._leaf_connected = leaf_connected
        self._core = core
        self._region = region
        self._edge = edge
        self._subject = subjects.ingest_subject(region, edge)
        self._max_content_bytes = max_content_bytes

    async def accept(
        self, sender: str, connection: str, frame: SendFrame
    ) -> AcceptedEvent:
        """Validate and store `frame`; raise a `ClientError` if it is rejected."""
        if not self._leaf_connected():
            # Fail at once: a publish would wait out its whole timeout.
            raise Unavailable(
                "this edge cannot reach its region's leaf node; resend the "
                "message with the same id, here later or in another region",
                ref=frame.id,
            )
        check_content(frame, self._max_content_bytes)
        if frame.group is not None:
            await self._check_group(sender, frame.group, frame.id)
        else:
            await self._check_recipient(sender, frame.to or "", frame.id)

        envelope = IngestEnvelope(
            sender=sender,
            recipient=frame.to,
            group=frame.group,
            client_msg_id=frame.id,
            content=frame.content,
            accepted_at_ms=time.time_ns() // 1_000_000,
            origin=Origin(region=self._region, edge=self._edge, connection=connection),
        )
        ack = await self._publish(envelope, f"{sender}:{frame.id}")
        log.debug("ingest.accepted", sender=sender, client_msg_id=frame.id, seq=ack.seq)
        return AcceptedEvent(id=frame.id, duplicate=bool(ack.duplicate))

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

    async def _publish(self, envelope: IngestEnvelope, msg_id: str) -> PubAck:
        try:
            return await self._js.publish(
                self._subject,
                envelope.model_dump_json().encode(),
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": msg_id},
            )
        except (NatsTimeoutError, NoRespondersError, TimeoutError, APIError) as exc:
            log.warning(
                "ingest.publish_failed",
                client_msg_id=envelope.client_msg_id,
                error=repr(exc),
            )
            raise Unavailable(
                "the region could not store the message; resend it with the same id",
                ref=envelope.client_msg_id,
            ) from exc
