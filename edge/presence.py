"""Batch the edge's sessions into one presence report per interval."""

from __future__ import annotations

import asyncio
import time

import structlog
from nats.aio.client import Client

from core import subjects
from core.schema import PresenceReport
from edge.sessions import LocalSessions

log = structlog.get_logger(__name__)


async def report_presence_forever(
    nc: Client, sessions: LocalSessions, region: str, edge: str, interval_s: float
) -> None:
    """Publish a snapshot of local users every `interval_s` until cancelled."""
    while True:
        try:
            report = PresenceReport(
                region=region,
                edge=edge,
                users=sessions.users(),
                sent_at_ms=time.time_ns() // 1_000_000,
            )
            await nc.publish(
                subjects.PRESENCE_REPORTS, report.model_dump_json().encode()
            )
        except Exception:
            log.exception("presence.report_failed", edge=edge)
        await asyncio.sleep(interval_s)
