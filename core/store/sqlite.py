"""The embedded SQLite backend: the default for a mesh on one machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import structlog

from core.errors import StoreError
from core.ids import ConversationId, UserId
from core.schema import StoredMessage
from core.store.base import MessageStore

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY
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
    PRIMARY KEY (user_id, conversation)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "message_id, conversation, seq, sender, recipient, content, timestamp_ms, "
    "client_msg_id"
)
_VALUES = ", ".join("?" * len(_COLUMNS.split(",")))


class SqliteStore(MessageStore):
    """A `MessageStore` in one SQLite file, in WAL mode with full fsync."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

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

    async def register_user(self, user: UserId) -> None:
        db = await self._conn()
        await db.execute("INSERT OR IGNORE INTO users (user_id) VALUES (?)", (user,))
        await db.commit()

    async def user_exists(self, user: UserId) -> bool:
        db = await self._conn()
        async with db.execute("SELECT 1 FROM users WHERE user_id = ?", (user,)) as cur:
            return await cur.fetchone() is not None

    async def append_message(
        self, message: StoredMessage, members: Sequence[UserId]
    ) -> None:
        db = await self._conn()
        m = message
        try:
            await db.execute("BEGIN IMMEDIATE")
            await db.execute(
                f"INSERT OR REPLACE INTO messages ({_COLUMNS}) VALUES ({_VALUES})",
                (
                    m.message_id,
                    m.conversation,
                    m.seq,
                    m.sender,
                    m.recipient,
                    m.content,
                    m.timestamp_ms,
                    m.client_msg_id,
                ),
            )
            await db.execute(
                "INSERT OR REPLACE INTO client_ids VALUES (?,?,?,?)",
                (m.sender, m.client_msg_id, m.conversation, m.seq),
            )
            await db.execute(
                "INSERT INTO conversations VALUES (?, ?) ON CONFLICT (conversation) "
                "DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                (m.conversation, m.seq),
            )
            await db.executemany(
                "INSERT OR IGNORE INTO user_conversations VALUES (?, ?)",
                [(user, m.conversation) for user in members],
            )
            await db.commit()
        except aiosqlite.Error as exc:
            await db.rollback()
            raise StoreError(
                f"append of {m.conversation}#{m.seq} failed: {exc}"
            ) from exc

    async def fetch_by_client_id(
        self, sender: UserId, client_msg_id: str
    ) -> StoredMessage | None:
        db = await self._conn()
        query = (
            f"SELECT {_prefixed('m.')} FROM client_ids c JOIN messages m "
            "ON m.conversation = c.conversation AND m.seq = c.seq "
            "WHERE c.sender = ? AND c.client_msg_id = ?"
        )
        async with db.execute(query, (sender, client_msg_id)) as cur:
            row = await cur.fetchone()
        return _to_message(row) if row else None

    async def fetch_last_seq(self, conversation: ConversationId) -> int:
        db = await self._conn()
        query = "SELECT last_seq FROM conversations WHERE conversation = ?"
        async with db.execute(query, (conversation,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def fetch_conversations(self, user: UserId) -> dict[ConversationId, int]:
        db = await self._conn()
        query = (
            "SELECT u.conversation, coalesce(c.last_seq, 0) FROM user_conversations u "
            "LEFT JOIN conversations c ON c.conversation = u.conversation "
            "WHERE u.user_id = ?"
        )
        async with db.execute(query, (user,)) as cur:
            rows = await cur.fetchall()
        return {ConversationId(row[0]): int(row[1]) for row in rows}

    async def fetch_messages_after(
        self, conversation: ConversationId, after_seq: int, limit: int
    ) -> list[StoredMessage]:
        db = await self._conn()
        query = (
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        async with db.execute(query, (conversation, after_seq, limit)) as cur:
            rows = await cur.fetchall()
        return [_to_message(row) for row in rows]

    async def fetch_latest(
        self, conversation: ConversationId, limit: int
    ) -> list[StoredMessage]:
        db = await self._conn()
        query = (
            f"SELECT {_COLUMNS} FROM messages WHERE conversation = ? "
            "ORDER BY seq DESC LIMIT ?"
        )
        async with db.execute(query, (conversation, limit)) as cur:
            rows = await cur.fetchall()
        return [_to_message(row) for row in reversed(list(rows))]


def _prefixed(prefix: str) -> str:
    return ", ".join(prefix + col.strip() for col in _COLUMNS.split(","))


def _to_message(row: Sequence[object]) -> StoredMessage:
    keys = [col.strip() for col in _COLUMNS.split(",")]
    return StoredMessage.model_validate(dict(zip(keys, row, strict=True)))
