"""Group posts this edge passed on that the core has not sequenced yet.

A group administration request goes straight to the core, while a post
travels through the region's leaf stream first. Without a wait, a request
sent right after a post could be sequenced before it: a member removed
"after" a post would miss it. So the edge forwards a user's group request
only once that user's earlier posts through this edge are committed or
rejected, or after a time limit.
"""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger(__name__)


class UncommittedPosts:
    """Per sender, the client message ids of group posts still in flight."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, asyncio.Event]] = {}

    def add(self, sender: str, client_msg_id: str) -> None:
        """Record a post that entered the leaf stream's batch."""
        posts = self._pending.setdefault(sender, {})
        posts.setdefault(client_msg_id, asyncio.Event())

    def settle(self, sender: str, client_msg_id: str) -> None:
        """Mark a post committed, rejected, or failed to store."""
        posts = self._pending.get(sender)
        if posts is None:
            return
        event = posts.pop(client_msg_id, None)
        if event is not None:
            event.set()
        if not posts:
            del self._pending[sender]

    def count(self, sender: str) -> int:
        return len(self._pending.get(sender, {}))

    async def drained(self, sender: str, timeout_s: float) -> bool:
        """Wait until the posts `sender` has in flight now are settled.

        Returns False if some were still in flight after `timeout_s`.
        Posts added during the wait do not extend it.
        """
        events = list(self._pending.get(sender, {}).values())
        if not events:
            return True
        waits = [asyncio.create_task(event.wait()) for event in events]
        try:
            _, still = await asyncio.wait(waits, timeout=timeout_s)
        finally:
            for wait in waits:
                wait.cancel()
        if still:
            log.warning(
                "edge.posts_not_committed",
                sender=sender,
                in_flight=len(still),
                waited_s=timeout_s,
            )
        return not still
