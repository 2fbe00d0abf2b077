"""Catch-up: the messages a user missed, after their per-conversation cursors."""

from __future__ import annotations

from core.ids import ConversationId, UserId
from core.schema import StoredMessage, SyncReply, SyncRequest
from core.store.base import MessageStore


async def fetch_sync_page(store: MessageStore, request: SyncRequest) -> SyncReply:
    """Return up to `request.limit` messages the user has not seen, in order.

    Only conversations the user belongs to are read, whatever cursors the
    request names. Messages come grouped by conversation, ascending by seq.
    `cursors` in the reply covers every conversation of the user, so a
    client learns of conversations it had never seen.
    """
    conversations = await store.fetch_conversations(UserId(request.user))
    cursors: dict[str, int] = {}
    messages: list[StoredMessage] = []
    more = False
    for conversation, last_seq in sorted(conversations.items()):
        cursor = min(request.cursors.get(conversation, 0), last_seq)
        room = request.limit - len(messages)
        if last_seq > cursor and room > 0:
            page = await store.fetch_messages_after(
                ConversationId(conversation), cursor, room
            )
            messages.extend(page)
            if page:
                cursor = page[-1].seq
        cursors[conversation] = cursor
        more = more or cursor < last_seq
    return SyncReply(messages=messages, cursors=cursors, more=more)
