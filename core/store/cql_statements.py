"""The CQL statements of the ScyllaDB backend, prepared once per keyspace.

Several writes set `USING TIMESTAMP` to a sequence (or a last-seen time), so
that the cell with the highest sequence wins whatever order writes and
replays arrive in. Any other write or DELETE of those columns must use the
same kind of timestamp, because a current-time timestamp would outrank every
later sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

MESSAGE_COLUMNS: Final = (
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
_SELECT_MESSAGE: Final = ", ".join(MESSAGE_COLUMNS)


@dataclass(frozen=True)
class Statements:
    """The prepared statements of one keyspace, named as in `statement_texts`."""

    insert_user: Any
    select_user: Any
    update_last_seen: Any
    select_last_seen: Any
    insert_message: Any
    insert_client_id: Any
    update_last_seq: Any
    update_user_conversation: Any
    select_client_id: Any
    select_message: Any
    select_last_seq: Any
    select_user_conversations: Any
    select_user_conversation: Any
    set_readable_from: Any
    set_readable_until: Any
    insert_group: Any
    select_group: Any
    insert_group_member: Any
    delete_group_member: Any
    insert_user_group: Any
    delete_user_group: Any
    select_group_members: Any
    select_user_groups: Any
    select_after: Any
    select_latest: Any
    select_setting: Any
    insert_setting: Any


def statement_texts(keyspace: str) -> dict[str, str]:
    """Return the CQL of every statement in `Statements`, for `keyspace`."""
    return {
        **_user_statements(keyspace),
        **_message_statements(keyspace),
        **_conversation_statements(keyspace),
        **_group_statements(keyspace),
        "select_setting": f"SELECT value FROM {keyspace}.store_settings WHERE name = ?",
        "insert_setting": (
            f"INSERT INTO {keyspace}.store_settings (name, value) VALUES (?, ?)"
        ),
    }


def is_read(name: str) -> bool:
    """Return whether the statement called `name` only reads."""
    return name.startswith("select_")


def _user_statements(ks: str) -> dict[str, str]:
    return {
        "insert_user": f"INSERT INTO {ks}.users (user_id) VALUES (?)",
        "select_user": f"SELECT user_id FROM {ks}.users WHERE user_id = ?",
        # Timestamp: the last-seen time in microseconds, so the latest wins.
        "update_last_seen": (
            f"UPDATE {ks}.user_last_seen USING TIMESTAMP ? SET last_seen_ms = ? "
            "WHERE user_id = ?"
        ),
        "select_last_seen": (
            f"SELECT last_seen_ms FROM {ks}.user_last_seen WHERE user_id = ?"
        ),
    }


def _message_statements(ks: str) -> dict[str, str]:
    markers = ", ".join("?" for _ in MESSAGE_COLUMNS)
    return {
        "insert_message": (
            f"INSERT INTO {ks}.messages (bucket, {_SELECT_MESSAGE}) "
            f"VALUES (?, {markers})"
        ),
        "insert_client_id": (
            f"INSERT INTO {ks}.client_ids (sender, client_msg_id, conversation, seq) "
            "VALUES (?, ?, ?, ?)"
        ),
        "select_client_id": (
            f"SELECT conversation, seq FROM {ks}.client_ids "
            "WHERE sender = ? AND client_msg_id = ?"
        ),
        "select_message": (
            f"SELECT {_SELECT_MESSAGE} FROM {ks}.messages "
            "WHERE conversation = ? AND bucket = ? AND seq = ?"
        ),
        "select_after": (
            f"SELECT {_SELECT_MESSAGE} FROM {ks}.messages "
            "WHERE conversation = ? AND bucket = ? AND seq > ? LIMIT ?"
        ),
        "select_latest": (
            f"SELECT {_SELECT_MESSAGE} FROM {ks}.messages "
            "WHERE conversation = ? AND bucket = ? ORDER BY seq DESC LIMIT ?"
        ),
    }


def _conversation_statements(ks: str) -> dict[str, str]:
    # Timestamps: the sequence of the message or membership change.
    return {
        "update_last_seq": (
            f"UPDATE {ks}.conversations USING TIMESTAMP ? SET last_seq = ? "
            "WHERE conversation = ?"
        ),
        "select_last_seq": (
            f"SELECT last_seq FROM {ks}.conversations WHERE conversation = ?"
        ),
        "update_user_conversation": (
            f"UPDATE {ks}.user_conversations USING TIMESTAMP ? SET last_seq = ? "
            "WHERE user_id = ? AND conversation = ?"
        ),
        "select_user_conversations": (
            f"SELECT conversation, last_seq, from_seq, until_seq "
            f"FROM {ks}.user_conversations WHERE user_id = ?"
        ),
        "select_user_conversation": (
            f"SELECT from_seq, until_seq FROM {ks}.user_conversations "
            "WHERE user_id = ? AND conversation = ?"
        ),
        "set_readable_from": (
            f"UPDATE {ks}.user_conversations USING TIMESTAMP ? "
            "SET from_seq = ?, until_seq = null WHERE user_id = ? AND conversation = ?"
        ),
        "set_readable_until": (
            f"UPDATE {ks}.user_conversations USING TIMESTAMP ? SET until_seq = ? "
            "WHERE user_id = ? AND conversation = ?"
        ),
    }


def _group_statements(ks: str) -> dict[str, str]:
    # Membership rows use the change's sequence as timestamp, like above.
    return {
        "insert_group": (
            f"INSERT INTO {ks}.groups (group_id, name, owner, created_ms) "
            "VALUES (?, ?, ?, ?) IF NOT EXISTS"
        ),
        "select_group": (
            f"SELECT group_id, name, owner, created_ms FROM {ks}.groups "
            "WHERE group_id = ?"
        ),
        "insert_group_member": (
            f"INSERT INTO {ks}.group_members (group_id, user_id, role) "
            "VALUES (?, ?, ?) USING TIMESTAMP ?"
        ),
        "delete_group_member": (
            f"DELETE FROM {ks}.group_members USING TIMESTAMP ? "
            "WHERE group_id = ? AND user_id = ?"
        ),
        "insert_user_group": (
            f"INSERT INTO {ks}.user_groups (user_id, group_id, role) "
            "VALUES (?, ?, ?) USING TIMESTAMP ?"
        ),
        "delete_user_group": (
            f"DELETE FROM {ks}.user_groups USING TIMESTAMP ? "
            "WHERE user_id = ? AND group_id = ?"
        ),
        "select_group_members": (
            f"SELECT user_id, role FROM {ks}.group_members WHERE group_id = ?"
        ),
        "select_user_groups": (
            f"SELECT group_id, role FROM {ks}.user_groups WHERE user_id = ?"
        ),
    }
