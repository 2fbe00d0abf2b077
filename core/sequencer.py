"""The sequencer: commits accepted messages in one total order per conversation.

It consumes the hub's `INGEST` stream in stream order, which keeps each
region's order, gives every new message the conversation's next dense
sequence and a time-ordered id, stores it, and routes one delivery to each
region that holds a session of a participant. Messages are committed in
batches: one store write for every new message of a batch, and one publish
per region for its deliveries, because each store write waits for a disk
flush. A batch is acked on the stream only after it is stored and routed,
so a crash between the two replays it; the (sender, client message id) key
makes the replay a no-op. Group membership changes take their seq from the
same counter, under the same lock, so they are ordered with the messages.
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
from core.store.base import MemberChange, MessageStore, validate_message

log = structlog.get_logger(__name__)

# Publish deliveries, in order, to one region as one message.
PublishDelivery = Callable[[str, list[Delivery]], Awaitable[None]]
ClientKey = tuple[UserId, str]

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
        """Commit and route one envelope; see `handle_batch`."""
        return (await self.handle_batch([envelope]))[0]

    async def handle_batch(
        self, envelopes: list[IngestEnvelope]
    ) -> list[StoredMessage | None]:
        """Commit and route envelopes in order, retrying store failures until they pass.

        Returns one entry per envelope: the stored message, or None when the
        message was rejected or dropped. A group post by a non-member is
        rejected, and the sender gets an error through the delivery path. A
        message with invalid content is dropped.
        """
        outcomes = await self.commit_batch(envelopes)
        await self.route_batch(envelopes, outcomes)
        return [o[0] if isinstance(o, tuple) else None for o in outcomes]

    async def commit_batch(self, envelopes: list[IngestEnvelope]) -> list[Outcome]:
        """Store the envelopes' new messages, retrying store failures until they pass.

        Returns one outcome per envelope, for `route_batch`.
        """
        async with self.lock:
            return await _retry_store(
                lambda: self._commit_batch(envelopes), envelopes[0]
            )

    async def route_batch(
        self, envelopes: list[IngestEnvelope], outcomes: list[Outcome]
    ) -> None:
        """Publish each region's deliveries of a committed batch as one message."""
        started = time.perf_counter()
        await self._route_batch(envelopes, outcomes)
        self._metrics.route_seconds.observe(time.perf_counter() - started)

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
        delivery = self._delivery(message, recipients, origin)
        regions = self._regions_for(recipients, origin)
        await asyncio.gather(*(self._publish(r, [delivery]) for r in sorted(regions)))

    def _regions_for(self, recipients: list[UserId], origin: Origin) -> set[str]:
        regions = {origin.region} if origin.region else set()
        for user in recipients:
            regions |= self._registry.regions_of(user)
        return regions

    @staticmethod
    def _delivery(
        message: StoredMessage, recipients: list[UserId], origin: Origin
    ) -> Delivery:
        return Delivery(
            message=message,
            recipients=recipients,
            origin=origin,
            committed_at_ms=time.time_ns() // 1_000_000,
        )

    async def _route_batch(
        self, envelopes: list[IngestEnvelope], outcomes: list[Outcome]
    ) -> None:
        """Publish each region's deliveries of the batch as one message, in order."""
        by_region: dict[str, list[Delivery]] = {}
        for envelope, outcome in zip(envelopes, outcomes, strict=True):
            origin = envelope.origin
            if isinstance(outcome, Rejection):
                delivery = Delivery(rejection=outcome, recipients=[], origin=origin)
                by_region.setdefault(origin.region, []).append(delivery)
            elif outcome is not None:
                message, recipients = outcome
                delivery = self._delivery(message, recipients, origin)
                for region in self._regions_for(recipients, origin):
                    by_region.setdefault(region, []).append(delivery)
        await asyncio.gather(
            *(self._publish(r, by_region[r]) for r in sorted(by_region))
        )

    # ---- internals -----------------------------------------------------------

    async def _commit_batch(self, envelopes: list[IngestEnvelope]) -> list[Outcome]:
        """Decide every envelope's outcome, then store the new messages at once."""
        keys = [(UserId(e.sender), e.client_msg_id) for e in envelopes]
        stored = await self._store.fetch_by_client_ids(keys)
        batch = _PendingBatch(stored, self._last_seq)
        outcomes = [
            await self._decide(e, key, batch)
            for e, key in zip(envelopes, keys, strict=True)
        ]
        if batch.appends:
            started = time.perf_counter()
            try:
                await self._store.append_messages(batch.appends)
            except StoreError:
                # The write may or may not have landed: reload sequences next time.
                for message, _ in batch.appends:
                    self._forget(ConversationId(message.conversation), None)
                raise
            self._metrics.store_write_seconds.observe(time.perf_counter() - started)
            self._metrics.commit_batch_messages.observe(len(batch.appends))
            self._metrics.committed.inc(len(batch.appends))
            for message, _ in batch.appends:
                self._last_seq[ConversationId(message.conversation)] = message.seq
        return outcomes

    async def _decide(
        self, envelope: IngestEnvelope, key: ClientKey, batch: _PendingBatch
    ) -> Outcome:
        """Return the envelope's outcome; a new message joins `batch.appends`."""
        sender = key[0]
        if envelope.group is not None:
            members = list(await self.members_of(envelope.group))
            conversation = group_conversation(envelope.group)
            recipient = None
        else:
            recipient = UserId(envelope.recipient or "")
            conversation = direct_conversation(sender, recipient)
            members = list(conversation_members(conversation))

        existing = batch.known.get(key)
        if existing is not None:
            self._metrics.duplicates.inc()
            _log_duplicate(existing)
            return existing, members
        if envelope.group is not None and sender not in members:
            log.info(
                "sequencer.rejected_non_member", sender=sender, group=envelope.group
            )
            self._metrics.rejected.inc()
            return Rejection(
                sender=sender,
                client_msg_id=envelope.client_msg_id,
                code="not_a_member",
                message=f"you are not a member of group {envelope.group!r}",
            )

        seq = await batch.next_seq(conversation, self._store)
        message = self._new_message(
            conversation,
            seq,
            sender,
            recipient,
            envelope.content,
            "text",
            None,
            client_msg_id=envelope.client_msg_id,
            timestamp_ms=envelope.accepted_at_ms,
        )

        # Group messages list no members: the group's rows already do.
        row_members = [] if envelope.group is not None else members
        try:
            validate_message(message, row_members)
        except ValueError as exc:
            # Retrying cannot help; keep the rest of the batch.
            log.error("sequencer.invalid_message", sender=sender, error=str(exc))
            self._metrics.errors.labels(kind="invalid_message").inc()
            batch.release_seq(conversation)
            return None
        batch.add(key, message, row_members)
        return message, members

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


Outcome = tuple[StoredMessage, list[UserId]] | Rejection | None


class _PendingBatch:
    """The messages one batch will store, and the sequences it has taken.

    `known` starts with the messages already stored under the batch's client
    ids and gains each new message, so a client id that appears twice in one
    batch (a resend that travelled in another edge batch) is stored once.
    Sequences are taken on top of the sequencer's `last_seq`, which changes
    only once the batch is stored.
    """

    def __init__(
        self,
        stored: dict[ClientKey, StoredMessage],
        last_seq: dict[ConversationId, int],
    ) -> None:
        self.known = dict(stored)
        self.appends: list[tuple[StoredMessage, list[UserId]]] = []
        self._committed_seq = last_seq
        self._taken: dict[ConversationId, int] = {}

    async def next_seq(self, conversation: ConversationId, store: MessageStore) -> int:
        last = self._taken.get(conversation)
        if last is None:
            last = self._committed_seq.get(conversation)
        if last is None:
            last = await store.fetch_last_seq(conversation)
        self._taken[conversation] = last + 1
        return last + 1

    def release_seq(self, conversation: ConversationId) -> None:
        """Give back the sequence just taken, for a message that is dropped."""
        self._taken[conversation] -= 1

    def add(
        self, key: ClientKey, message: StoredMessage, members: list[UserId]
    ) -> None:
        self.known[key] = message
        self.appends.append((message, members))
