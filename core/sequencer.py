"""The sequencer: commits accepted messages in one total order per conversation.

It consumes the hub's `INGEST` stream in stream order, which keeps each
region's order, gives every new message the conversation's next dense
sequence and a time-ordered id, stores it, and routes one delivery to each
region that holds a session of a participant. A message is acked on the
stream only after it is stored and routed, so a crash between the two
replays it; the (sender, client message id) key makes the replay a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from core.errors import StoreError
from core.ids import (
    ConversationId,
    MessageIdGenerator,
    UserId,
    conversation_members,
    direct_conversation,
)
from core.schema import Delivery, IngestEnvelope, StoredMessage
from core.sessions import SessionRegistry
from core.store.base import MessageStore

log = structlog.get_logger(__name__)

PublishDelivery = Callable[[str, Delivery], Awaitable[None]]

RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0


class Sequencer:
    """Assign sequences, store, and route; the single writer of each sequence."""

    def __init__(
        self,
        store: MessageStore,
        registry: SessionRegistry,
        ids: MessageIdGenerator,
        publish: PublishDelivery,
    ) -> None:
        self._store = store
        self._registry = registry
        self._ids = ids
        self._publish = publish
        self._last_seq: dict[ConversationId, int] = {}

    async def handle(self, envelope: IngestEnvelope) -> StoredMessage:
        """Commit and route one envelope, retrying store failures until they pass."""
        message = await self._commit_with_retry(envelope)
        await self._route(message, envelope)
        return message

    async def _commit_with_retry(self, envelope: IngestEnvelope) -> StoredMessage:
        delay_s = RETRY_INITIAL_S
        attempt = 1
        while True:
            try:
                return await self._commit(envelope)
            except StoreError as exc:
                log.warning(
                    "sequencer.store_retry",
                    sender=envelope.sender,
                    client_msg_id=envelope.client_msg_id,
                    attempt=attempt,
                    retry_in_s=delay_s,
                    error=str(exc),
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
                attempt += 1

    async def _commit(self, envelope: IngestEnvelope) -> StoredMessage:
        sender = UserId(envelope.sender)
        existing = await self._store.fetch_by_client_id(sender, envelope.client_msg_id)
        if existing is not None:
            log.info(
                "sequencer.duplicate",
                sender=sender,
                client_msg_id=envelope.client_msg_id,
                message_id=existing.message_id,
            )
            return existing

        conversation = direct_conversation(sender, UserId(envelope.recipient))
        seq = await self._next_seq(conversation)
        message = StoredMessage(
            message_id=self._ids.next_id(),
            conversation=conversation,
            seq=seq,
            sender=sender,
            recipient=envelope.recipient,
            content=envelope.content,
            timestamp_ms=envelope.accepted_at_ms,
            client_msg_id=envelope.client_msg_id,
        )
        try:
            await self._store.append_message(
                message, conversation_members(conversation)
            )
        except StoreError:
            # The write may or may not have landed: reload the sequence next time.
            self._last_seq.pop(conversation, None)
            raise
        self._last_seq[conversation] = seq
        log.debug("sequencer.committed", conversation=conversation, seq=seq)
        return message

    async def _next_seq(self, conversation: ConversationId) -> int:
        last = self._last_seq.get(conversation)
        if last is None:
            last = await self._store.fetch_last_seq(conversation)
        return last + 1

    async def _route(self, message: StoredMessage, envelope: IngestEnvelope) -> None:
        recipients = [message.sender]
        if message.recipient is not None:
            recipients.append(message.recipient)
        regions = {envelope.origin.region}
        for user in recipients:
            regions |= self._registry.regions_of(user)
        delivery = Delivery(
            message=message, recipients=recipients, origin=envelope.origin
        )
        await asyncio.gather(
            *(self._publish(region, delivery) for region in sorted(regions))
        )
