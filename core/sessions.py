"""The session registry: which regions hold a session for each user.

Edges report their users in batches (one report per edge per interval), and
tell the registry at once when a user connects, so a message committed just
after a connect is routed to the new region. A user stays routed to a
region until `offline_timeout_s` after the last report that named them
there, so a reconnect elsewhere within the timeout never flaps the route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from core.schema import PresenceReport, SessionOpen

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


@dataclass
class _UserState:
    # region -> edge -> monotonic time the edge last reported the user
    seen: dict[str, dict[str, float]] = field(default_factory=dict)


class SessionRegistry:
    """Route lookups for the sequencer, fed by edge reports.

    Until one timeout has passed since start, the registry may not know every
    session, so `regions_of` returns every region then: a message is better
    sent to a region that drops it than lost to a region that wanted it.
    """

    def __init__(
        self,
        regions: Iterable[str],
        offline_timeout_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._regions = frozenset(regions)
        self._timeout_s = offline_timeout_s
        self._clock = clock
        self._started = clock()
        self._users: dict[str, _UserState] = {}

    def on_open(self, event: SessionOpen) -> None:
        self._mark(event.user, event.region, event.edge, self._clock())
        log.debug(
            "sessions.opened", user=event.user, region=event.region, edge=event.edge
        )

    def on_report(self, report: PresenceReport) -> None:
        now = self._clock()
        for user in report.users:
            self._mark(user, report.region, report.edge, now)

    def regions_of(self, user: str) -> set[str]:
        """Return the regions where `user` has, or recently had, a session."""
        now = self._clock()
        if now - self._started < self._timeout_s:
            return set(self._regions)
        state = self._users.get(user)
        if state is None:
            return set()
        return {
            region
            for region, edges in state.seen.items()
            if any(now - seen_at <= self._timeout_s for seen_at in edges.values())
        }

    def forget_expired(self) -> int:
        """Drop entries older than the timeout; return how many users went."""
        now = self._clock()
        gone = [u for u, s in self._users.items() if not self._fresh(s, now)]
        for user in gone:
            del self._users[user]
        return len(gone)

    def _fresh(self, state: _UserState, now: float) -> bool:
        return any(
            now - seen_at <= self._timeout_s
            for edges in state.seen.values()
            for seen_at in edges.values()
        )

    def _mark(self, user: str, region: str, edge: str, now: float) -> None:
        state = self._users.setdefault(user, _UserState())
        state.seen.setdefault(region, {})[edge] = now
