"""The message store interface that every backend implements.

The interface asks only for what ScyllaDB does well: single-partition reads
in clustering order, idempotent upserts, and one atomic multi-row write per
message (a logged batch in Scylla, a transaction in SQLite). There are no
cross-partition scans, no joins and no counters that need read-modify-write:
the sequencer is the single writer of each conversation's sequence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from core.ids import ConversationId, UserId
from core.schema import StoredMessage


class MessageStore(ABC):
    """Storage of users, committed messages and per-user conversation lists.

    Every write is idempotent: repeating it with the same values leaves the
    store as one write would. Backends raise `core.errors.StoreError` for
    failures that may succeed on retry.
    """

    @abstractmethod
    async def ensure_schema(self) -> None:
        """Create or migrate tables; safe to run again."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def register_user(self, user: UserId) -> None:
        """Record that `user` exists; registering again changes nothing."""

    @abstractmethod
    async def user_exists(self, user: UserId) -> bool: ...

    @abstractmethod
    async def append_message(
        self, message: StoredMessage, members: Sequence[UserId]
    ) -> None:
        """Store `message` atomically with its idempotency key and bookkeeping.

        In one atomic write: the message row at (conversation, seq), the
        (sender, client_msg_id) key that maps to it, the conversation's last
        sequence, and the conversation in the lists of `members`. The caller
        guarantees that `seq` is the conversation's next sequence.
        """

    @abstractmethod
    async def fetch_by_client_id(
        self, sender: UserId, client_msg_id: str
    ) -> StoredMessage | None:
        """Return the message stored under a sender's client message id, if any."""

    @abstractmethod
    async def fetch_last_seq(self, conversation: ConversationId) -> int:
        """Return the conversation's highest stored sequence, 0 when empty."""

    @abstractmethod
    async def fetch_conversations(self, user: UserId) -> dict[ConversationId, int]:
        """Return every conversation of `user` with its last sequence."""

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
