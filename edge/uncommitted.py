"""Group posts this edge passed on that the core has not sequenced yet.

A group administration request goes straight to the core, while a post
travels through the region's leaf stream first. Without a wait, a request
sent right after a post could be sequenced before it: a member removed
"after" a post would miss it. So the edge forwards a user's change to a
group only once that user's earlier posts to the group through this edge
are committed or rejected, or after a time limit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

# A post whose commit never reached this edge (the delivery feed restarted,
# or the core dropped the message) is forgotten after this long.
FORGET_AFTER_S = 60.0


@dataclass
class _Post:
    group: str
    added_at: float
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class UncommittedPosts:
    """Per sender, the group posts still in flight, by client message id."""

    def __init__(self, forget_after_s: float = FORGET_AFTER_S) -> None:
        self._pending: dict[str, dict[str, _Post]] = {}
        self._forget_after_s = forget_after_s

    def add(self, sender: str, group: str, client_msg_id: str) -> None:
        """Record a post that entered the leaf stream's batch."""
        posts = self._pending.setdefault(sender, {})
        self._forget_old(sender, posts)
        posts.setdefault(client_msg_id, _Post(group, time.monotonic()))

    def settle(self, sender: str, client_msg_id: str) -> None:
        """Mark a post committed, rejected, or failed to store."""
        posts = self._pending.get(sender)
        if posts is None:
            return
        post = posts.pop(client_msg_id, None)
        if post is not None:
            post.settled.set()
        if not posts:
            del self._pending[sender]

    def clear(self) -> None:
        """Forget every post, for when deliveries may have been missed."""
        for posts in self._pending.values():
            for post in posts.values():
                post.settled.set()
        self._pending.clear()

    def count(self, sender: str) -> int:
        return len(self._pending.get(sender, {}))

    async def drained(self, sender: str, group: str, timeout_s: float) -> bool:
        """Wait until the posts `sender` has in flight to `group` now are settled.

        Returns False, and drops those posts from the record, if some were
        still in flight after `timeout_s`. Posts added during the wait do not extend it.
        """
        posts = self._pending.get(sender, {})
        waiting = {i: p for i, p in posts.items() if p.group == group}
        if not waiting:
            return True
        waits = [asyncio.create_task(p.settled.wait()) for p in waiting.values()]
        try:
            _, still = await asyncio.wait(waits, timeout=timeout_s)
        finally:
            for wait in waits:
                wait.cancel()
        if still:
            log.warning(
                "edge.posts_not_committed",
                sender=sender,
                group=group,
                in_flight=len(still),
                waited_s=timeout_s,
            )
            for client_msg_id, post in waiting.items():
                if not post.settled.is_set():
                    self.settle(sender, client_msg_id)
        return not still

    def _forget_old(self, sender: str, posts: dict[str, _Post]) -> None:
        horizon = time.monotonic() - self._forget_after_s
        for client_msg_id in [i for i, p in posts.items() if p.added_at < horizon]:
            log.warning(
                "edge.post_commit_not_seen",
                sender=sender,
                client_msg_id=client_msg_id,
                forgotten_after_s=self._forget_after_s,
            )
            posts.pop(client_msg_id).settled.set()
