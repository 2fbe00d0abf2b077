"""The ScyllaDB backend: messages replicated to one datacenter per region.

Every request goes to the local datacenter only, at LOCAL_QUORUM, so a region
keeps working while another region's datacenter is down, and fails while its
own datacenter has no quorum. `core.store.cql_session` runs the requests from
asyncio, with retries, and `core.store.cql_statements` contains their CQL.

Apache Cassandra 5.0 serves the same CQL and runs this backend in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Final, TypeVar

import structlog
from cassandra import ConsistencyLevel
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType

from core.errors import StoreError
from core.ids import ConversationId, UserId
from core.schema import GroupRole, StoredMessage
from core.store import cql_migrations
from core.store.base import (
    ConversationPosition,
    GroupRecord,
    MemberChange,
    MessageStore,
    validate_message,
)
from core.store.cql_session import CqlSession, Page, RetrySettings
from core.store.cql_statements import (
    MESSAGE_COLUMNS,
    Statements,
    is_read,
    statement_texts,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_BUCKET_SIZE: Final = 1000
# Each batch stays below ScyllaDB's default batch_size_warn_threshold_in_kb of
# 128 KiB, and its fail threshold is 1024 KiB. Apache Cassandra defaults to
# 5 KiB and 50 KiB, which a 64 KiB message exceeds, so a Cassandra cluster
# needs batch_size_fail_threshold raised to at least 128KiB.
DEFAULT_MAX_BATCH_BYTES: Final = 120 * 1024
# An estimated upper bound of the per-row overhead in a batch (column names,
# clustering prefix, timestamps), used only to split large member lists.
ROW_OVERHEAD_BYTES: Final = 64
PAGE_SIZE: Final = 1000
# Single-partition requests in flight at once for one multi-key call.
MAX_PARALLEL_REQUESTS: Final = 64
BUCKET_SIZE_SETTING: Final = "bucket_size"
_PAGED_STATEMENTS: Final = (
    "select_user_conversations",
    "select_group_members",
    "select_user_groups",
)


class ScyllaStore(MessageStore):
    """A `MessageStore` in a ScyllaDB (or Cassandra) keyspace.

    `replication` maps each datacenter to its replication factor, and
    `local_datacenter` is the one this process sends requests to. Messages
    live in partitions of `bucket_size` sequences. The bucket size is stored
    in the keyspace on first use and must never change afterwards, so a
    store opened with another size raises `StoreError`.
    """

    def __init__(
        self,
        contact_points: list[str],
        port: int,
        keyspace: str,
        local_datacenter: str,
        replication: dict[str, int],
        request_timeout_s: float = 5.0,
        *,
        bucket_size: int = DEFAULT_BUCKET_SIZE,
        retry: RetrySettings | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        read_consistency: int = ConsistencyLevel.LOCAL_QUORUM,
        write_consistency: int = ConsistencyLevel.LOCAL_QUORUM,
    ) -> None:
        cql_migrations.validate_keyspace(keyspace)
        cql_migrations.validate_replication(replication)
        if bucket_size < 1:
            raise ValueError(f"bucket_size is {bucket_size}; it must be >= 1")
        self._retry = retry or RetrySettings()
        self._session = CqlSession(
            contact_points,
            port,
            local_datacenter,
            request_timeout_s,
            self._retry,
            default_consistency=read_consistency,
        )
        self._keyspace = keyspace
        self._replication = dict(replication)
        self._bucket_size = bucket_size
        self._max_batch_bytes = max_batch_bytes
        self._read_consistency = read_consistency
        self._write_consistency = write_consistency
        self._statements: Statements | None = None
        self._bucket_checked = False

    @property
    def bucket_size(self) -> int:
        return self._bucket_size

    # ---- setup ---------------------------------------------------------------

    async def migrate(self) -> list[cql_migrations.Migration]:
        """Apply pending migrations, prepare statements and return what was applied."""
        await self._session.connect()
        applied = await cql_migrations.apply_migrations(
            self._session, self._keyspace, self._replication
        )
        await self._ready()
        return applied

    async def ensure_schema(self) -> None:
        await self.migrate()

    async def close(self) -> None:
        self._statements = None
        self._bucket_checked = False
        await self._session.close()

    async def _ready(self) -> Statements:
        """Connect, prepare every statement and check the bucket size once."""
        if self._statements is None:
            texts = statement_texts(self._keyspace)
            consistency = {
                name: self._read_consistency
                if is_read(name)
                else self._write_consistency
                for name in texts
            }
            prepared = await self._session.prepare(texts, consistency)
            for name in _PAGED_STATEMENTS:
                prepared[name].fetch_size = PAGE_SIZE
            self._statements = Statements(**prepared)
        if not self._bucket_checked:
            await self._check_bucket_size(self._statements)
            self._bucket_checked = True
        return self._statements

    async def _check_bucket_size(self, statements: Statements) -> None:
        # NOTE: two processes that open an empty keyspace at the same time with
        # different bucket sizes both pass, and the last write wins.
        page = await self._execute(
            "read bucket size", statements.select_setting, (BUCKET_SIZE_SETTING,)
        )
        if not page.rows:
            await self._execute(
                "record bucket size",
                statements.insert_setting,
                (BUCKET_SIZE_SETTING, self._bucket_size),
            )
            return
        stored = int(page.rows[0]["value"])
        if stored != self._bucket_size:
            raise StoreError(
                f"keyspace {self._keyspace} keeps messages in buckets of {stored} "
                f"sequences, but this store was opened with bucket_size="
                f"{self._bucket_size}. Open it with bucket_size={stored}"
            )

    async def _execute(
        self,
        operation: str,
        statement: Any,
        params: Sequence[object] | None = None,
        paging_state: bytes | None = None,
    ) -> Page:
        return await self._session.execute(operation, statement, params, paging_state)

    async def _read_all(
        self, operation: str, statement: Any, params: Sequence[object]
    ) -> list[dict[str, Any]]:
        """Return every row of a paged single-partition read."""
        rows: list[dict[str, Any]] = []
        paging_state: bytes | None = None
        while True:
            page = await self._execute(operation, statement, params, paging_state)
            rows.extend(page.rows)
            if page.paging_state is None:
                return rows
            paging_state = page.paging_state

    # ---- users ---------------------------------------------------------------

    async def register_user(self, user: UserId) -> None:
        statements = await self._ready()
        await self._execute("register_user", statements.insert_user, (user,))

    async def user_exists(self, user: UserId) -> bool:
        statements = await self._ready()
        page = await self._execute("user_exists", statements.select_user, (user,))
        return bool(page.rows)

    async def record_last_seen(self, seen: dict[UserId, int]) -> None:
        """Store each user's last-seen time. An older time never replaces a newer.

        Unlike the SQLite backend, this also stores times of users that are
        not registered, which `user_exists` does not see.
        """
        statements = await self._ready()
        for user, seen_ms in seen.items():
            if seen_ms < 0:
                raise ValueError(f"last-seen time {seen_ms} of {user!r} is negative")
        await _gather_limited(
            self._execute(
                "record_last_seen",
                statements.update_last_seen,
                (seen_ms * 1000, seen_ms, user),
            )
            for user, seen_ms in seen.items()
        )

    async def fetch_last_seen(self, users: Iterable[UserId]) -> dict[UserId, int]:
        statements = await self._ready()
        requested = list(dict.fromkeys(users))
        pages = await _gather_limited(
            self._execute("fetch_last_seen", statements.select_last_seen, (user,))
            for user in requested
        )
        return {
            user: int(page.rows[0]["last_seen_ms"])
            for user, page in zip(requested, pages, strict=True)
            if page.rows and page.rows[0]["last_seen_ms"] is not None
        }

    # ---- messages ------------------------------------------------------------

    async def append_message(
        self, message: StoredMessage, members: Sequence[UserId]
    ) -> None:
        """Store `message` in one LOGGED batch with its bookkeeping rows.

        The message row, its client id row and the conversation's last_seq
        always share the first batch. Member rows join it while the batch
        stays under `max_batch_bytes`, and a large group's remaining member
        rows follow in further LOGGED batches. If one of those fails, the
        error propagates and retrying the append (every write is idempotent)
        completes the members' conversation lists.
        """
        validate_message(message, members)
        statements = await self._ready()
        operation = f"append_message {message.conversation}#{message.seq}"
        for batch in self._append_batches(statements, message, members):
            await self._execute(operation, batch)

    def _append_batches(
        self, statements: Statements, message: StoredMessage, members: Sequence[UserId]
    ) -> list[Any]:
        m = message
        batch = self._new_batch()
        self._add_message_rows(batch, statements, m)
        batches = [batch]
        size = len(m.content.encode("utf-8")) + 3 * (
            ROW_OVERHEAD_BYTES + 2 * len(m.conversation) + len(m.sender)
        )
        for user in dict.fromkeys(members):
            row_size = ROW_OVERHEAD_BYTES + len(user) + len(m.conversation)
            if size + row_size > self._max_batch_bytes and len(batch) > 3:
                batch = self._new_batch()
                batches.append(batch)
                size = 0
            batch.add(
                statements.update_user_conversation,
                (m.seq, m.seq, user, m.conversation),
            )
            size += row_size
        return batches

    def _add_message_rows(
        self, batch: Any, statements: Statements, message: StoredMessage
    ) -> None:
        """Add the message, client id and last_seq writes to `batch`."""
        m = message
        # UNSET leaves a missing value out, where None would write a tombstone.
        values = [UNSET_VALUE if value is None else value for value in _row_of(m)]
        batch.add(statements.insert_message, [self._bucket(m.seq), *values])
        batch.add(
            statements.insert_client_id,
            (m.sender, m.client_msg_id, m.conversation, m.seq),
        )
        batch.add(statements.update_last_seq, (m.seq, m.seq, m.conversation))

    def _new_batch(self) -> Any:
        batch = BatchStatement(
            batch_type=BatchType.LOGGED, consistency_level=self._write_consistency
        )
        batch.is_idempotent = True
        return batch

    def _bucket(self, seq: int) -> int:
        return seq // self._bucket_size

    async def fetch_by_client_id(
        self, sender: UserId, client_msg_id: str
    ) -> StoredMessage | None:
        statements = await self._ready()
        page = await self._execute(
            "fetch_by_client_id", statements.select_client_id, (sender, client_msg_id)
        )
        if not page.rows:
            return None
        conversation = str(page.rows[0]["conversation"])
        seq = int(page.rows[0]["seq"])
        found = await self._execute(
            "fetch_by_client_id",
            statements.select_message,
            (conversation, self._bucket(seq), seq),
        )
        if not found.rows:
            # The client id row and the message row are written in one
            # LOGGED batch, so this is a partial read during that write.
            log.warning(
                "store.client_id_without_message",
                sender=sender,
                client_msg_id=client_msg_id,
                conversation=conversation,
                seq=seq,
            )
            return None
        return _to_message(found.rows[0])

    async def fetch_last_seq(self, conversation: ConversationId) -> int:
        statements = await self._ready()
        page = await self._execute(
            "fetch_last_seq", statements.select_last_seq, (conversation,)
        )
        if not page.rows or page.rows[0]["last_seq"] is None:
            return 0
        return int(page.rows[0]["last_seq"])

    async def fetch_conversations(
        self, user: UserId
    ) -> dict[ConversationId, ConversationPosition]:
        """Read the user's partition, plus last_seq of each group conversation.

        Rows written by `append_message` members (1-1 conversations) carry
        their last_seq. Rows written by `apply_member_change` have `from_seq`
        set and no maintained last_seq, because group messages are appended
        without members, so their last_seq is read from `conversations`.
        """
        statements = await self._ready()
        rows = await self._read_all(
            "fetch_conversations", statements.select_user_conversations, (user,)
        )
        groups = [ConversationId(r["conversation"]) for r in rows if _is_group_row(r)]
        group_last = await _gather_limited(self.fetch_last_seq(c) for c in groups)
        last_seqs = dict(zip(groups, group_last, strict=True))
        positions: dict[ConversationId, ConversationPosition] = {}
        for row in rows:
            conversation = ConversationId(row["conversation"])
            last_seq = last_seqs.get(conversation, row["last_seq"] or 0)
            positions[conversation] = ConversationPosition(
                last_seq=int(last_seq),
                from_seq=int(row["from_seq"] or 1),
                until_seq=None if row["until_seq"] is None else int(row["until_seq"]),
            )
        return positions

    async def fetch_messages_after(
        self, conversation: ConversationId, after_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Read forward from bucket (after_seq + 1) // bucket_size.

        A bucket read that ends before the bucket's last sequence ends the
        scan. That relies on sequences being dense, which the sequencer
        guarantees, so a read of up to `bucket_size` messages touches at most
        two partitions.
        """
        _check_limit(limit)
        statements = await self._ready()
        messages: list[StoredMessage] = []
        cursor = max(after_seq, 0)
        bucket = self._bucket(cursor + 1)
        while len(messages) < limit:
            page = await self._execute(
                "fetch_messages_after",
                statements.select_after,
                (conversation, bucket, cursor, limit - len(messages)),
            )
            messages.extend(_to_message(row) for row in page.rows)
            if page.rows:
                cursor = int(page.rows[-1]["seq"])
            if cursor < (bucket + 1) * self._bucket_size - 1:
                break
            bucket += 1
        return messages

    async def fetch_latest(
        self, conversation: ConversationId, limit: int
    ) -> list[StoredMessage]:
        """Read backward from the bucket of the conversation's last_seq.

        Every bucket below the newest one is full because sequences are
        dense, so an empty older bucket means there is nothing further down
        and ends the scan.
        """
        _check_limit(limit)
        if limit == 0:
            return []
        last_seq = await self.fetch_last_seq(conversation)
        if last_seq == 0:
            return []
        statements = await self._ready()
        newest_first: list[dict[str, Any]] = []
        bucket = self._bucket(last_seq)
        while len(newest_first) < limit and bucket >= 0:
            requested = limit - len(newest_first)
            page = await self._execute(
                "fetch_latest",
                statements.select_latest,
                (conversation, bucket, requested),
            )
            newest_first.extend(page.rows)
            if not page.rows and bucket < self._bucket(last_seq):
                break
            bucket -= 1
        return [_to_message(row) for row in reversed(newest_first)]

    # ---- groups --------------------------------------------------------------

    async def create_group(self, group: GroupRecord) -> bool:
        """Insert the group with a lightweight transaction (IF NOT EXISTS).

        Returns False when the group exists. When an attempt failed with a
        timeout and the retry finds a row equal to `group`, that row is taken
        to be from the failed attempt, and the result is True.
        """
        statements = await self._ready()
        retried = False

        def note_retry() -> None:
            nonlocal retried
            retried = True

        page = await self._session.execute(
            f"create_group {group.group}",
            statements.insert_group,
            (group.group, group.name, group.owner, group.created_ms),
            on_retry=note_retry,
        )
        row = page.rows[0]
        if row["[applied]"]:
            return True
        return retried and _to_group(row) == group

    async def fetch_group(self, group: str) -> GroupRecord | None:
        statements = await self._ready()
        page = await self._execute("fetch_group", statements.select_group, (group,))
        return _to_group(page.rows[0]) if page.rows else None

    async def fetch_members(self, group: str) -> dict[UserId, GroupRole]:
        statements = await self._ready()
        rows = await self._read_all(
            "fetch_members", statements.select_group_members, (group,)
        )
        return {UserId(row["user_id"]): row["role"] for row in rows}

    async def fetch_groups_of(self, user: UserId) -> dict[str, GroupRole]:
        statements = await self._ready()
        rows = await self._read_all(
            "fetch_groups_of", statements.select_user_groups, (user,)
        )
        return {str(row["group_id"]): row["role"] for row in rows}

    async def apply_member_change(
        self, event: StoredMessage, change: MemberChange
    ) -> None:
        """Store the event and the change in one LOGGED batch.

        Membership writes use the change's sequence as their timestamp, so a
        replayed older change never undoes a newer one. Whether an added
        member keeps their `from_seq` (a role change) or gets a new one
        (joining or rejoining) depends on their current row, which is read
        first. The sequencer is the only writer of a group's membership, so
        nothing changes that row between the read and the batch.
        """
        validate_message(event, [change.user])
        statements = await self._ready()
        operation = f"apply_member_change {change.group}#{change.seq}"
        current = await self._execute(
            operation,
            statements.select_user_conversation,
            (change.user, event.conversation),
        )
        batch = self._new_batch()
        self._add_message_rows(batch, statements, event)
        _add_membership_rows(batch, statements, event, change, current.rows)
        await self._execute(operation, batch)


def _add_membership_rows(
    batch: Any,
    statements: Statements,
    event: StoredMessage,
    change: MemberChange,
    current: list[dict[str, Any]],
) -> None:
    seq, user, conversation = change.seq, change.user, event.conversation
    if change.role is None:
        batch.add(statements.delete_group_member, (seq, change.group, user))
        batch.add(statements.delete_user_group, (seq, user, change.group))
        # Like the SQLite backend, a user who never belonged gets no row.
        if current:
            batch.add(statements.set_readable_until, (seq, seq, user, conversation))
        return
    batch.add(statements.insert_group_member, (change.group, user, change.role, seq))
    batch.add(statements.insert_user_group, (user, change.group, change.role, seq))
    is_member_now = bool(current) and current[0]["until_seq"] is None
    if not is_member_now:
        batch.add(statements.set_readable_from, (seq, seq, user, conversation))


def _is_group_row(row: dict[str, Any]) -> bool:
    return row["from_seq"] is not None or row["last_seq"] is None


async def _gather_limited(requests: Iterable[Awaitable[T]]) -> list[T]:
    """Await `requests` with at most `MAX_PARALLEL_REQUESTS` in flight."""
    limit = asyncio.Semaphore(MAX_PARALLEL_REQUESTS)

    async def run(request: Awaitable[T]) -> T:
        async with limit:
            return await request

    return list(await asyncio.gather(*(run(request) for request in requests)))


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit is {limit}; it must be >= 0")


def _row_of(message: StoredMessage) -> list[Any]:
    return [getattr(message, column) for column in MESSAGE_COLUMNS]


def _to_message(row: dict[str, Any]) -> StoredMessage:
    return StoredMessage.model_validate({key: row[key] for key in MESSAGE_COLUMNS})


def _to_group(row: dict[str, Any]) -> GroupRecord:
    return GroupRecord(
        group=str(row["group_id"]),
        name=str(row["name"]),
        owner=UserId(str(row["owner"])),
        created_ms=int(row["created_ms"]),
    )
