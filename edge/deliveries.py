"""Fan deliveries out from the region's delivery stream to local connections.

One copy of each delivery crosses from the hub to the region, however many
recipients it has there; every edge of the region reads it from the leaf
and pushes it to the connections it holds.
"""

from __future__ import annotations

import time

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from core.metrics import EdgeMetrics
from core.schema import (
    CommittedEvent,
    Delivery,
    DeliveryBatch,
    ErrorEvent,
    MessageEvent,
    MessageView,
    StoredMessage,
)
from edge.sessions import LocalSessions
from edge.uncommitted import UncommittedPosts

log = structlog.get_logger(__name__)


class DeliveryFanout:
    """Turn each `Delivery` into events on the recipients' local connections."""

    def __init__(
        self,
        sessions: LocalSessions,
        edge: str,
        metrics: EdgeMetrics,
        uncommitted: UncommittedPosts | None = None,
    ) -> None:
        self._sessions = sessions
        self._edge = edge
        self._metrics = metrics
        self._uncommitted = uncommitted or UncommittedPosts()
        self.deliveries_received = 0

    async def on_message(self, msg: Msg) -> None:
        deliveries = _unpack(msg.data)
        if deliveries is None:
            log.error("deliveries.invalid", subject=msg.subject, size=len(msg.data))
            self._metrics.errors.labels(kind="invalid_delivery").inc()
            return
        self.deliveries_received += len(deliveries)
        self._metrics.deliveries.inc(len(deliveries))
        for delivery in deliveries:
            self.fan_out(delivery)

    def fan_out(self, delivery: Delivery) -> int:
        """Push `delivery` to every local connection of its recipients."""
        if delivery.message is None:
            return self._reject(delivery)
        message = delivery.message
        event = MessageEvent(message=MessageView.of(message)).model_dump_json()
        origin = delivery.origin
        if origin.edge == self._edge:
            self._uncommitted.settle(message.sender, message.client_msg_id)
        pushed = 0
        for user in delivery.recipients:
            for conn in self._sessions.connections_of(user):
                if origin.edge == self._edge and conn.id == origin.connection:
                    conn.push(_committed(message))
                else:
                    conn.push(event)
                pushed += 1
        self._observe(delivery, message, pushed)
        log.debug(
            "deliveries.fanned_out", message_id=message.message_id, connections=pushed
        )
        return pushed

    def _observe(self, delivery: Delivery, message: StoredMessage, pushed: int) -> None:
        metrics = self._metrics
        metrics.delivered.inc(pushed)
        now_ms = time.time_ns() / 1_000_000
        if delivery.committed_at_ms is not None:
            metrics.commit_to_fanout_seconds.observe(
                max(0.0, now_ms - delivery.committed_at_ms) / 1000
            )
        if message.kind == "text":
            metrics.end_to_end_seconds.observe(
                max(0.0, now_ms - message.timestamp_ms) / 1000
            )

    def _reject(self, delivery: Delivery) -> int:
        rejection = delivery.rejection
        if rejection is None or delivery.origin.edge != self._edge:
            return 0
        if rejection.sender is not None:
            self._uncommitted.settle(rejection.sender, rejection.client_msg_id)
        event = ErrorEvent(
            code=rejection.code, message=rejection.message, ref=rejection.client_msg_id
        ).model_dump_json()
        for conn in self._sessions.connections_of_id(delivery.origin.connection):
            conn.push(event)
            return 1
        return 0


def _unpack(data: bytes) -> list[Delivery] | None:
    """Return the deliveries of a stream message, or None if it is invalid.

    The core publishes `DeliveryBatch`es; a single `Delivery` is what it
    published before it batched, and may still wait in the stream.
    """
    try:
        return list(DeliveryBatch.model_validate_json(data).deliveries)
    except ValidationError:
        pass
    try:
        return [Delivery.model_validate_json(data)]
    except ValidationError:
        return None


def _committed(message: StoredMessage) -> str:
    return CommittedEvent(
        id=message.client_msg_id,
        message_id=str(message.message_id),
        conversation=message.conversation,
        seq=message.seq,
        timestamp_ms=message.timestamp_ms,
    ).model_dump_json()
