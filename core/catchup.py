"""Catch-up: the messages a user missed, after their per-conversation cursors."""

from __future__ import annotations

from core.ids import ConversationId, UserId
from core.schema import StoredMessage, SyncReply, SyncRequest
from core.store.base import MessageStore


async def fetch_sync_page(store: MessageStore, request: SyncRequest) -> SyncReply:
    """Return up to `request.limit` messages the user has not seen, in order.

    Only conversations the user belongs or belonged to are read, and only
    the range of seqs their membership covers, whatever cursors the request
    names. Messages come grouped by conversation, ascending by seq.
    `cursors` in the reply covers every conversation of the user, so a
    client learns of conversations it had never seen.
    """
    positions = await store.fetch_conversations(UserId(request.user))
    cursors: dict[str, int] = {}
    messages: list[StoredMessage] = []
    more = False
    for conversation, position in sorted(positions.items()):
        last = position.readable_last
        start = max(request.cursors.get(conversation, 0), position.from_seq - 1)
        cursor = min(start, last)
        room = request.limit - len(messages)
        if last > cursor and room > 0:
            page = await store.fetch_messages_after(
                ConversationId(conversation), cursor, min(room, last - cursor)
            )
            messages.extend(page)
            if page:
                cursor = page[-1].seq
        cursors[conversation] = cursor
        more = more or cursor < last
    return SyncReply(messages=messages, cursors=cursors, more=more)
