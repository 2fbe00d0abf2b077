"""Presence queries with authorization, and the periodic change broadcast."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client

from core import subjects
from core.ids import UserId, conversation_members
from core.metrics import CoreMetrics
from core.schema import PresenceChanges, PresenceReply, PresenceRequest
from core.sequencer import Sequencer
from core.sessions import SessionRegistry
from core.store.base import MessageStore

log = structlog.get_logger(__name__)

CHANGES_PER_MESSAGE = 500


class PresenceService:
    """Presence queries, served only to contacts and group peers."""

    def __init__(
        self,
        store: MessageStore,
        registry: SessionRegistry,
        sequencer: Sequencer,
        metrics: CoreMetrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._registry = registry
        self._sequencer = sequencer

    async def query(self, request: PresenceRequest) -> PresenceReply:
        visible = await self.visible_to(UserId(request.actor))
        allowed = [u for u in dict.fromkeys(request.users) if u in visible]
        denied = [u for u in dict.fromkeys(request.users) if u not in visible]
        stored = await self._store.fetch_last_seen(UserId(u) for u in allowed)
        states = [self._registry.presence(u, stored.get(UserId(u))) for u in allowed]
        return PresenceReply(users=states, denied=denied)

    async def visible_to(self, actor: UserId) -> set[str]:
        """Return the users whose presence `actor` may see, `actor` included."""
        visible: set[str] = {actor}
        for conversation in await self._store.fetch_conversations(actor):
            if conversation.startswith("dm:"):
                visible.update(conversation_members(conversation))
        for group in await self._store.fetch_groups_of(actor):
            visible.update(await self._sequencer.members_of(group))
        return visible

    async def publish_changes_forever(self, nc: Client, interval_s: float) -> None:
        """Once per interval, publish what changed and store last-seen times."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._publish_changes(nc)
            except Exception:
                log.exception("presence.publish_failed")
                self._metrics.errors.labels(kind="presence_publish_failed").inc()

    async def _publish_changes(self, nc: Client) -> None:
        changes = self._registry.collect_changes()
        if not changes:
            return
        went_offline = {
            UserId(c.user): c.last_seen_ms
            for c in changes
            if not c.online and c.last_seen_ms is not None
        }
        if went_offline:
            await self._store.record_last_seen(
                {u: ms for u, ms in went_offline.items() if ms is not None}
            )
        for start in range(0, len(changes), CHANGES_PER_MESSAGE):
            batch = PresenceChanges(users=changes[start : start + CHANGES_PER_MESSAGE])
            await nc.publish(
                subjects.PRESENCE_CHANGES, batch.model_dump_json().encode()
            )
        self._metrics.presence_changes.inc(len(changes))
        log.debug("presence.changes_published", count=len(changes))
