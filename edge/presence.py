"""Presence at the edge: one report per interval up, changes fanned out down.

Clients' heartbeats stop at the edge. Upwards the edge sends one
`PresenceReport` per interval, with only the users who came or went (and a
full list every `FULL_REPORT_EVERY` reports, so a registry that missed one
recovers). Downwards the core publishes one batch of changes per interval,
and the edge pushes each change to the local connections watching that user.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from core import subjects
from core.metrics import EdgeMetrics
from core.schema import (
    PresenceChanges,
    PresenceEvent,
    PresenceFullRequest,
    PresenceReport,
    UserPresence,
)
from edge.sessions import Connection, LocalSessions

log = structlog.get_logger(__name__)

FULL_REPORT_EVERY = 10


def next_report(
    sessions: LocalSessions,
    region: str,
    edge: str,
    report_seq: int,
    full: bool = False,
) -> PresenceReport:
    """Build the report number `report_seq` (counting from 1) from the sessions.

    It is a full report when `full` is set or its turn has come.
    """
    came, went = sessions.take_changes()
    full = full or report_seq % FULL_REPORT_EVERY == 1
    return PresenceReport(
        region=region,
        edge=edge,
        report_seq=report_seq,
        full=full,
        online=sessions.users() if full else came,
        offline=[] if full else went,
        sent_at_ms=time.time_ns() // 1_000_000,
    )


class FullReportRequests:
    """The core's requests for a full report from this edge, taken one at a time.

    The core requests one after it restarted or missed reports, so that it
    need not wait for the next scheduled full report.
    """

    def __init__(self, edge: str) -> None:
        self._edge = edge
        self._pending = False

    async def on_request(self, msg: Msg) -> None:
        try:
            request = PresenceFullRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("presence.invalid_full_request", error=str(exc))
            return
        if self._edge in request.edges:
            self._pending = True

    def take(self) -> bool:
        """Return whether a full report was requested, and forget the request."""
        pending, self._pending = self._pending, False
        return pending


async def report_presence_forever(
    nc: Client,
    sessions: LocalSessions,
    region: str,
    edge: str,
    interval_s: float,
    metrics: EdgeMetrics,
    requests: FullReportRequests | None = None,
) -> None:
    """Publish one presence report every `interval_s` until cancelled."""
    for report_seq in itertools.count(1):
        try:
            full = requests.take() if requests is not None else False
            report = next_report(sessions, region, edge, report_seq, full)
            await nc.publish(
                subjects.PRESENCE_REPORTS, report.model_dump_json().encode()
            )
            metrics.presence_reports.inc()
        except Exception:
            log.exception("presence.report_failed", edge=edge)
            metrics.errors.labels(kind="presence_report_failed").inc()
        await asyncio.sleep(interval_s)


class PresenceFanout:
    """Push presence changes to the local connections that watch each user."""

    def __init__(self, sessions: LocalSessions) -> None:
        self._sessions = sessions

    async def on_changes(self, msg: Msg) -> None:
        try:
            changes = PresenceChanges.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("presence.invalid_changes", error=str(exc))
            return
        per_connection: dict[str, tuple[Connection, list[UserPresence]]] = {}
        grouped: defaultdict[str, list[UserPresence]] = defaultdict(list)
        for change in changes.users:
            for conn in self._sessions.watchers_of(change.user):
                per_connection.setdefault(conn.id, (conn, grouped[conn.id]))
                grouped[conn.id].append(change)
        for conn, states in per_connection.values():
            conn.push(PresenceEvent(users=states).model_dump_json())
