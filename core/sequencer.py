"""The sequencer: commits accepted messages in one total order per conversation.

It consumes the hub's `INGEST` stream in stream order, which keeps each
region's order, gives every new message the conversation's next dense
sequence and a time-ordered id, stores it, and routes one delivery to each
region that holds a session of a participant. A message is acked on the
stream only after it is stored and routed, so a crash between the two
replays it; the (sender, client message id) key makes the replay a no-op.
Group membership changes take their seq from the same counter, under the
same lock, so they are ordered with the messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from core.errors import StoreError
from core.ids import (
    ConversationId,
    MessageIdGenerator,
    UserId,
    conversation_members,
    direct_conversation,
    group_conversation,
)
from core.metrics import CoreMetrics
from core.schema import (
    Delivery,
    GroupRole,
    IngestEnvelope,
    MessageKind,
    Origin,
    Rejection,
    StoredMessage,
)
from core.sessions import SessionRegistry
from core.store.base import MemberChange, MessageStore

log = structlog.get_logger(__name__)

PublishDelivery = Callable[[str, Delivery], Awaitable[None]]

T = TypeVar("T")
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
        metrics: CoreMetrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._registry = registry
        self._ids = ids
        self._publish = publish
        self._last_seq: dict[ConversationId, int] = {}
        self._members: dict[str, dict[UserId, GroupRole]] = {}
        self.lock = asyncio.Lock()

    async def handle(self, envelope: IngestEnvelope) -> StoredMessage | None:
        """Commit and route one envelope, retrying store failures until they pass.

        Returns None when the message was rejected (a group post by a
        non-member); the sender is told through the delivery path.
        """
        async with self.lock:
            outcome = await _retry_store(lambda: self._commit(envelope), envelope)
        if isinstance(outcome, Rejection):
            self._metrics.rejected.inc()
            await self._route_rejection(outcome, envelope.origin)
            return None
        message, recipients = outcome
        started = time.perf_counter()
        await self.route(message, recipients, envelope.origin)
        self._metrics.route_seconds.observe(time.perf_counter() - started)
        return message

    async def members_of(self, group: str) -> dict[UserId, GroupRole]:
        """Return the group's current members, from the cache or the store."""
        members = self._members.get(group)
        if members is None:
            members = await self._store.fetch_members(group)
            self._members[group] = members
        return members

    async def commit_member_change(
        self,
        actor: UserId,
        group: str,
        kind: MessageKind,
        change: tuple[UserId, GroupRole | None],
        content: str = "",
    ) -> StoredMessage:
        """Store a membership event and the change it makes; call under `lock`."""
        user, role = change
        conversation = group_conversation(group)
        seq = await self._next_seq(conversation)
        event = self._new_message(conversation, seq, actor, None, content, kind, user)
        try:
            await self._store.apply_member_change(
                event, MemberChange(group, user, role, seq)
            )
        except StoreError:
            self._forget(conversation, group)
            raise
        self._last_seq[conversation] = seq
        members = await self.members_of(group)
        if role is None:
            members.pop(user, None)
        else:
            members[user] = role
        return event

    async def route(
        self, message: StoredMessage, recipients: list[UserId], origin: Origin
    ) -> None:
        """Publish one delivery to each region holding a session of a recipient."""
        regions = {origin.region} if origin.region else set()
        for user in recipients:
            regions |= self._registry.regions_of(user)
        delivery = Delivery(
            message=message,
            recipients=recipients,
            origin=origin,
            committed_at_ms=time.time_ns() // 1_000_000,
        )
        await asyncio.gather(*(self._publish(r, delivery) for r in sorted(regions)))

    # ---- internals -----------------------------------------------------------

    async def _commit(
        self, envelope: IngestEnvelope
    ) -> tuple[StoredMessage, list[UserId]] | Rejection:
        sender = UserId(envelope.sender)
        if envelope.group is not None:
            return await self._commit_group(envelope, sender, envelope.group)
        recipient = UserId(envelope.recipient or "")
        conversation = direct_conversation(sender, recipient)
        members = list(conversation_members(conversation))
        existing = await self._store.fetch_by_client_id(sender, envelope.client_msg_id)
        if existing is not None:
            self._metrics.duplicates.inc()
            _log_duplicate(existing)
            return existing, members
        message = await self._append(envelope, conversation, recipient, members)
        return message, members

    async def _commit_group(
        self, envelope: IngestEnvelope, sender: UserId, group: str
    ) -> tuple[StoredMessage, list[UserId]] | Rejection:
        members = await self.members_of(group)
        existing = await self._store.fetch_by_client_id(sender, envelope.client_msg_id)
        if existing is not None:
            self._metrics.duplicates.inc()
            _log_duplicate(existing)
            return existing, list(members)
        if sender not in members:
            log.info("sequencer.rejected_non_member", sender=sender, group=group)
            return Rejection(
                client_msg_id=envelope.client_msg_id,
                code="not_a_member",
                message=f"you are not a member of group {group!r}",
            )
        conversation = group_conversation(group)
        message = await self._append(envelope, conversation, None, [])
        return message, list(members)

    async def _append(
        self,
        envelope: IngestEnvelope,
        conversation: ConversationId,
        recipient: UserId | None,
        members: list[UserId],
    ) -> StoredMessage:
        seq = await self._next_seq(conversation)
        message = self._new_message(
            conversation,
            seq,
            UserId(envelope.sender),
            recipient,
            envelope.content,
            "text",
            None,
            client_msg_id=envelope.client_msg_id,
            timestamp_ms=envelope.accepted_at_ms,
        )
        started = time.perf_counter()
        try:
            await self._store.append_message(message, members)
        except StoreError:
            # The write may or may not have landed: reload the sequence next time.
            self._forget(conversation, envelope.group)
            raise
        self._metrics.store_write_seconds.observe(time.perf_counter() - started)
        self._metrics.commit_batch_messages.observe(1)
        self._metrics.committed.inc()
        self._last_seq[conversation] = seq
        log.debug("sequencer.committed", conversation=conversation, seq=seq)
        return message

    def _new_message(
        self,
        conversation: ConversationId,
        seq: int,
        sender: UserId,
        recipient: UserId | None,
        content: str,
        kind: MessageKind,
        target: UserId | None,
        client_msg_id: str | None = None,
        timestamp_ms: int | None = None,
    ) -> StoredMessage:
        message_id = self._ids.next_id()
        return StoredMessage(
            message_id=message_id,
            conversation=conversation,
            seq=seq,
            sender=sender,
            recipient=recipient,
            content=content,
            timestamp_ms=timestamp_ms or time.time_ns() // 1_000_000,
            client_msg_id=client_msg_id or f"sys-{message_id}",
            kind=kind,
            target=target,
        )

    async def _next_seq(self, conversation: ConversationId) -> int:
        last = self._last_seq.get(conversation)
        if last is None:
            last = await self._store.fetch_last_seq(conversation)
        return last + 1

    def _forget(self, conversation: ConversationId, group: str | None) -> None:
        self._last_seq.pop(conversation, None)
        if group is not None:
            self._members.pop(group, None)

    async def _route_rejection(self, rejection: Rejection, origin: Origin) -> None:
        delivery = Delivery(rejection=rejection, recipients=[], origin=origin)
        await self._publish(origin.region, delivery)


async def _retry_store(
    operation: Callable[[], Awaitable[T]], envelope: IngestEnvelope
) -> T:
    """Run `operation` until it stops raising `StoreError`, with backoff."""
    delay_s = RETRY_INITIAL_S
    attempt = 1
    while True:
        try:
            return await operation()
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


def _log_duplicate(existing: StoredMessage) -> None:
    log.info(
        "sequencer.duplicate",
        sender=existing.sender,
        client_msg_id=existing.client_msg_id,
        message_id=existing.message_id,
    )
