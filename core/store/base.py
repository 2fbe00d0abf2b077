"""The message store interface that every backend implements.

The interface requires only what ScyllaDB does well: single-partition reads
in clustering order, idempotent upserts, and one atomic multi-row write per
change (a logged batch in Scylla, a transaction in SQLite). There are no
cross-partition scans, no joins and no counters that need read-modify-write:
the sequencer is the single writer of each conversation's sequence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.errors import ChatmeshError
from core.ids import ConversationId, UserId
from core.schema import GroupRole, StoredMessage

# Edges enforce a smaller, configurable limit; this one guards the store.
MAX_CONTENT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConversationPosition:
    """A user's readable range in one conversation.

    The user may read seqs from `from_seq` through `until_seq` (inclusive;
    None means no end) of a conversation whose latest seq is `last_seq`.
    A group member removed at seq S has `until_seq` S; one added at S has
    `from_seq` S.
    """

    last_seq: int
    from_seq: int = 1
    until_seq: int | None = None

    @property
    def readable_last(self) -> int:
        """Return the highest seq this user may read."""
        if self.until_seq is None:
            return self.last_seq
        return min(self.last_seq, self.until_seq)


@dataclass(frozen=True)
class GroupRecord:
    group: str
    name: str
    owner: UserId
    created_ms: int


@dataclass(frozen=True)
class MemberChange:
    """A membership change committed with the event message at `seq`.

    `role` None removes the member: they may read up to `seq` and nothing
    after. A role adds the member (or changes their role): they may read
    from `seq` on.
    """

    group: str
    user: UserId
    role: GroupRole | None
    seq: int


class InvalidMessageContent(ChatmeshError, ValueError):
    """A message's text is not valid UTF-8 or is over `MAX_CONTENT_BYTES`."""


def validate_message(message: StoredMessage, members: Sequence[UserId]) -> None:
    """Raise `ValueError` for a message the store must not send to the cluster.

    Content must encode as UTF-8 (a Python string with lone surrogates does
    not) and take at most `MAX_CONTENT_BYTES` bytes. Raises
    `InvalidMessageContent` for bad content.
    """
    where = f"{message.conversation}#{message.seq}"
    try:
        size = len(message.content.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidMessageContent(
            f"content of message {where} is not valid UTF-8: {error.reason} at "
            f"character {error.start}. Reject the message before it is sequenced"
        ) from error
    if size > MAX_CONTENT_BYTES:
        raise InvalidMessageContent(
            f"content of message {where} is {size} bytes of UTF-8, over the "
            f"maximum of {MAX_CONTENT_BYTES} bytes"
        )
    if message.seq < 1:
        raise ValueError(f"message {where} has seq {message.seq}; sequences start at 1")
    ids = [message.conversation, message.sender, message.client_msg_id, *members]
    if message.target is not None:
        ids.append(message.target)
    for text in ids:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"id {text!r} of message {where} is not valid UTF-8"
            ) from error


class MessageStore(ABC):
    """Storage of users, committed messages, groups and presence.

    Every write is idempotent: repeating it with the same values leaves the
    store as one write would. Backends raise `core.errors.StoreError` for
    failures that may succeed on retry.
    """

    @abstractmethod
    async def ensure_schema(self) -> None:
        """Create or migrate tables; safe to run again."""

    @abstractmethod
    async def close(self) -> None: ...

    # ---- users ---------------------------------------------------------------

    @abstractmethod
    async def register_user(self, user: UserId) -> None:
        """Record that `user` exists; registering again changes nothing."""

    @abstractmethod
    async def user_exists(self, user: UserId) -> bool: ...

    @abstractmethod
    async def record_last_seen(self, seen: dict[UserId, int]) -> None:
        """Store each user's last-seen time in Unix milliseconds."""

    @abstractmethod
    async def fetch_last_seen(self, users: Iterable[UserId]) -> dict[UserId, int]:
        """Return the stored last-seen times of those users that have one."""

    # ---- messages ------------------------------------------------------------

    @abstractmethod
    async def append_message(
        self, message: StoredMessage, members: Sequence[UserId]
    ) -> None:
        """Store `message` atomically with its idempotency key and bookkeeping.

        In one atomic write: the message row at (conversation, seq), the
        (sender, client_msg_id) key that maps to it, the conversation's last
        sequence, and the conversation in the lists of `members` (readable
        from seq 1; pass no members for group messages). The caller
        guarantees that `seq` is the conversation's next sequence.
        """

    async def append_messages(
        self, batch: Sequence[tuple[StoredMessage, Sequence[UserId]]]
    ) -> None:
        """Store each (message, members) pair as `append_message` does, in order.

        Backends that can store the whole batch in one atomic write do so,
        which saves a disk flush per message. This default stores one
        message after another, so a failure may leave a prefix stored. A
        retry of the whole batch is safe, because every write is idempotent.
        """
        for message, members in batch:
            await self.append_message(message, members)

    async def fetch_by_client_ids(
        self, keys: Sequence[tuple[UserId, str]]
    ) -> dict[tuple[UserId, str], StoredMessage]:
        """Return the messages stored under any of these (sender, client id) keys."""
        found: dict[tuple[UserId, str], StoredMessage] = {}
        for sender, client_msg_id in dict.fromkeys(keys):
            message = await self.fetch_by_client_id(sender, client_msg_id)
            if message is not None:
                found[(sender, client_msg_id)] = message
        return found

    @abstractmethod
    async def fetch_by_client_id(
        self, sender: UserId, client_msg_id: str
    ) -> StoredMessage | None:
        """Return the message stored under a sender's client message id, if any."""

    @abstractmethod
    async def fetch_last_seq(self, conversation: ConversationId) -> int:
        """Return the conversation's highest stored sequence, 0 when empty."""

    @abstractmethod
    async def fetch_conversations(
        self, user: UserId
    ) -> dict[ConversationId, ConversationPosition]:
        """Return every conversation `user` belongs or belonged to."""

    @abstractmethod
    async def fetch_messages_after(
        self, conversation: ConversationId, after_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Return up to `limit` messages with seq > `after_seq`, ascending."""

    @abstractmethod
    async def fetch_latest(
        self, conversation: ConversationId, limit: int
    ) -> list[StoredMessage]:
        """Return the latest `limit` messages of a conversation, ascending."""

    # ---- groups --------------------------------------------------------------

    @abstractmethod
    async def create_group(self, group: GroupRecord) -> bool:
        """Create the group; return False, changing nothing, if it exists."""

    @abstractmethod
    async def fetch_group(self, group: str) -> GroupRecord | None: ...

    @abstractmethod
    async def fetch_members(self, group: str) -> dict[UserId, GroupRole]: ...

    @abstractmethod
    async def fetch_groups_of(self, user: UserId) -> dict[str, GroupRole]:
        """Return the groups `user` is a member of now, with their roles."""

    @abstractmethod
    async def apply_member_change(
        self, event: StoredMessage, change: MemberChange
    ) -> None:
        """Store the event message and the membership change in one atomic write.

        The event is stored as `append_message` would store it with no
        members; the change updates the member list, the user's group list
        and the user's readable range of the group's conversation.
        """
