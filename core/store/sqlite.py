"""The embedded SQLite backend: the default for a mesh on one machine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from core.errors import StoreError
from core.ids import ConversationId, UserId
from core.schema import GroupRole, StoredMessage
from core.store.base import (
    ConversationPosition,
    GroupRecord,
    MemberChange,
    MessageStore,
    validate_message,
)

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    last_seen_ms INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT,
    content TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    client_msg_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,
    PRIMARY KEY (conversation, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_ids (
    sender TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (sender, client_msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    conversation TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_conversations (
    user_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    until_seq INTEGER,
    PRIMARY KEY (user_id, conversation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    group_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_user ON group_members (user_id);
"""

_MESSAGE_COLUMNS = (
    "message_id",
    "conversation",
    "seq",
    "sender",
    "recipient",
    "content",
    "timestamp_ms",
    "client_msg_id",
    "kind",
    "target",
)
_COLUMNS = ", ".join(_MESSAGE_COLUMNS)
_MEMBERSHIP = "INSERT OR IGNORE INTO user_conversations VALUES (?, ?, 1, NULL)"
# Two bound parameters per key, well under SQLite's limit of 32766.
_KEYS_PER_QUERY = 500
_VALUES = ", ".join("?" * len(_MESSAGE_COLUMNS))


class SqliteStore(MessageStore):
    """A `MessageStore` in one SQLite file, in WAL mode with full fsync."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        # One connection serves every caller: transactions must not interleave.
        self._write_lock = asyncio.Lock()

    async def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            try:
                self._db = await aiosqlite.connect(self._path)
                await self._db.execute("PRAGMA journal_mode=WAL")
                await self._db.execute("PRAGMA synchronous=FULL")
            except aiosqlite.Error as exc:
                raise StoreError(
                    f"cannot open SQLite store {self._path}: {exc}"
                ) from exc
        return self._db

    async def ensure_schema(self) -> None:
        db = await self._conn()
        await db.executescript(SCHEMA)
        await db.commit()
        log.info("store.schema_ready", backend="sqlite", path=str(self._path))

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _fetchall(self, query: str, args: Sequence[Any]) -> list[Any]:
        db = await self._conn()
        async with db.execute(query, args) as cur:
            return list(await cur.fetchall())

    async def _write(
        self, statements: Sequence[tuple[str, Sequence[Any]]], what: str
    ) -> None:
        """Run `statements` in one transaction; raise `StoreError` on failure."""
        db = await self._conn()
        async with self._write_lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                for query, args in statements:
                    await db.execute(query, args)
                await db.commit()
            except aiosqlite.Error as exc:
                await db.rollback()
                raise StoreError(f"{what} failed: {exc}") from exc

    async def _write_many(
        self, statements: Sequence[tuple[str, Sequence[Any]]], what: str
    ) -> None:
        """Run `statements` in one transaction, one `executemany` per query text.

        Statements with the same query run together, in the order of their
        query's first use, so the transaction crosses to aiosqlite's thread
        once per query, not once per row. Callers pass only statements whose
        order across queries does not matter, as the batch's upserts are.
        """
        groups: dict[str, list[Sequence[Any]]] = {}
        for query, args in statements:
            groups.setdefault(query, []).append(args)
        db = await self._conn()
        async with self._write_lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                for query, rows in groups.items():
                    await db.executemany(query, rows)
                await db.commit()
            except aiosqlite.Error as exc:
                await db.rollback()
                raise StoreError(f"{what} failed: {exc}") from exc

    # ---- users ---------------------------------------------------------------

    async def register_user(self, user: UserId) -> None:
        query = "INSERT OR IGNORE INTO users (user_id) VALUES (?)"
        await self._write([(query, (user,))], f"register of {user}")

    async def user_exists(self, user: UserId) -> bool:
        rows = await self._fetchall("SELECT 1 FROM users WHERE user_id = ?", (user,))
        return bool(rows)

    async def record_last_seen(self, seen: dict[UserId, int]) -> None:
        query = (
            "UPDATE users SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?) "
            "WHERE user_id = ?"
        )
        statements = [(query, (ms, user)) for user, ms in seen.items()]
        await self._write(statements, "last-seen update")

    async def fetch_last_seen(self, users: Iterable[UserId]) -> dict[UserId, int]:
        wanted = list(users)
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        query = (
            f"SELECT user_id, last_seen_ms FROM users WHERE user_id IN ({marks}) "
            "AND last_seen_ms IS NOT NULL"
        )
        rows = await self._fetchall(query, wanted)
        return {UserId(row[0]): int(row[1]) for row in rows}

    # ---- messages ------------------------------------------------------------

    async def append_message(
        self, message: StoredMessage, members: Sequence[UserId]
    ) -> None:
        validate_message(message, members)
        statements = _message_statements(message)
        statements += [(_MEMBERSHIP, (u, message.conversation)) for u in members]
        await self._write(statements, f"append of {message.conversation}#{message.seq}")

    async def append_messages(
        self, batch: Sequence[tuple[StoredMessage, Sequence[UserId]]]
    ) -> None:
        """Store the whole batch in one transaction: one WAL fsync for all."""
        statements: list[tuple[str, Sequence[Any]]] = []
        for message, members in batch:
            validate_message(message, members)
            statements += _message_statements(message)
            statements += [(_MEMBERSHIP, (u, message.conversation)) for u in members]
        if statements:
            await self._write_many(statements, f"append of {len(batch)} messages")

    async def fetch_by_client_ids(
        self, keys: Sequence[tuple[UserId, str]]
    ) -> dict[tuple[UserId, str], StoredMessage]:
        wanted = list(dict.fromkeys(keys))
        found: dict[tuple[UserId, str], StoredMessage] = {}
        for start in range(0, len(wanted), _KEYS_PER_QUERY):
            chunk = wanted[start : start + _KEYS_PER_QUERY]
            values = ", ".join("(?, ?)" for _ in chunk)
            query = (
                f"WITH wanted (sender, client_msg_id) AS (VALUES {values}) "
                f"SELECT {_prefixed('m.')} FROM wanted w JOIN client_ids c "
                "ON c.sender = w.sender AND c.client_msg_id = w.client_msg_id "
                "JOIN messages m ON m.conversation = c.conversation AND m.seq = c.seq"
            )
            args = [part for key in chunk for part in key]
            for row in await self._fetchall(query, args):
                message = _to_message(row)
                found[(UserId(message.sender), message.client_msg_id)] = message
        return found

    async def fetch_by_client_id(
        self, sender: UserId, client_msg_id: str
    ) -> StoredMessage | None:
        query = (
            f"SELECT {_prefixed('m.')} FROM client_ids c JOIN messages m "
            "ON m.conversation = c.conversation AND m.seq = c.seq "
            "WHERE c.sender = ? AND c.client_msg_id = ?"
        )
        rows = await self._fetchall(query, (sender, client_msg_id))
        return _to_message(rows[0]) if rows else None

    async def fetch_last_seq(self, conversation: ConversationId) -> int:
        query = "SELECT last_seq FROM conversations WHERE conversation = ?"
        rows = await self._fetchall(query, (conversation,))
        return int(rows[0][0]) if rows else 0

    async def fetch_conversations(
        self, user: UserId
    ) -> dict[ConversationId, ConversationPosition]:
        query = (
            "SELECT u.conversation, coalesce(c.last_seq, 0), u.from_seq, u.until_seq "
            "FROM user_conversations u "
            "LEFT JOIN conversations c ON c.conversation = u.conversation "
            "WHERE u.user_id = ?"
        )
        rows = await self._fetchall(query, (user,))
        return {
            ConversationId(row[0]): ConversationPosition(
                last_seq=int(row[1]), from_seq=int(row[2]), until_seq=row[3]
            )
            for row in rows
        }

    async def fetch_messages_after(
        self, conversation: ConversationId, after_seq: int, limit: int
    ) -> list[StoredMessage]:
        query = (
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        rows = await self._fetchall(query, (conversation, after_seq, limit))
        return [_to_message(row) for row in rows]

    async def fetch_latest(
        self, conversation: ConversationId, limit: int
    ) -> list[StoredMessage]:
        query = (
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? "
            "ORDER BY seq DESC LIMIT ?"
        )
        rows = await self._fetchall(query, (conversation, limit))
        return [_to_message(row) for row in reversed(rows)]

    # ---- groups --------------------------------------------------------------

    async def create_group(self, group: GroupRecord) -> bool:
        db = await self._conn()
        async with self._write_lock:
            try:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO groups VALUES (?, ?, ?, ?)",
                    (group.group, group.name, group.owner, group.created_ms),
                )
                await db.commit()
            except aiosqlite.Error as exc:
                raise StoreError(
                    f"create of group {group.group} failed: {exc}"
                ) from exc
        return cur.rowcount == 1

    async def fetch_group(self, group: str) -> GroupRecord | None:
        query = (
            "SELECT group_id, name, owner, created_ms FROM groups WHERE group_id = ?"
        )
        rows = await self._fetchall(query, (group,))
        if not rows:
            return None
        group_id, name, owner, created_ms = rows[0]
        return GroupRecord(group_id, name, UserId(owner), int(created_ms))

    async def fetch_members(self, group: str) -> dict[UserId, GroupRole]:
        query = "SELECT user_id, role FROM group_members WHERE group_id = ?"
        rows = await self._fetchall(query, (group,))
        return {UserId(row[0]): row[1] for row in rows}

    async def fetch_groups_of(self, user: UserId) -> dict[str, GroupRole]:
        query = "SELECT group_id, role FROM group_members WHERE user_id = ?"
        rows = await self._fetchall(query, (user,))
        return {row[0]: row[1] for row in rows}

    async def apply_member_change(
        self, event: StoredMessage, change: MemberChange
    ) -> None:
        validate_message(event, [change.user])
        statements = _message_statements(event)
        conversation = event.conversation
        if change.role is None:
            statements += [
                (
                    "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                    (change.group, change.user),
                ),
                (
                    "UPDATE user_conversations SET until_seq = ? "
                    "WHERE user_id = ? AND conversation = ?",
                    (change.seq, change.user, conversation),
                ),
            ]
        else:
            statements += [
                (
                    "INSERT OR REPLACE INTO group_members VALUES (?, ?, ?)",
                    (change.group, change.user, change.role),
                ),
                (
                    "INSERT INTO user_conversations VALUES (?, ?, ?, NULL) "
                    "ON CONFLICT (user_id, conversation) DO UPDATE SET "
                    "from_seq = CASE WHEN until_seq IS NULL THEN from_seq "
                    "ELSE excluded.from_seq END, until_seq = NULL",
                    (change.user, conversation, change.seq),
                ),
            ]
        await self._write(statements, f"member change in {change.group}#{change.seq}")


def _message_statements(m: StoredMessage) -> list[tuple[str, Sequence[Any]]]:
    return [
        (
            f"INSERT OR REPLACE INTO messages ({_COLUMNS}) VALUES ({_VALUES})",
            tuple(getattr(m, column) for column in _MESSAGE_COLUMNS),
        ),
        (
            "INSERT OR REPLACE INTO client_ids VALUES (?, ?, ?, ?)",
            (m.sender, m.client_msg_id, m.conversation, m.seq),
        ),
        (
            "INSERT INTO conversations VALUES (?, ?) ON CONFLICT (conversation) "
            "DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            (m.conversation, m.seq),
        ),
    ]


def _prefixed(prefix: str) -> str:
    return ", ".join(prefix + column for column in _MESSAGE_COLUMNS)


def _to_message(row: Sequence[object]) -> StoredMessage:
    return StoredMessage.model_validate(dict(zip(_MESSAGE_COLUMNS, row, strict=True)))
