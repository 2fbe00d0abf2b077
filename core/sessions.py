"""The session registry: who is online, where, and when they were last seen.

Edges send one presence report per interval (a delta of users who connected
or whose last connection closed, and now and then a full list), and tell
the registry at once when a user connects, so a message committed just
after a connect is routed to the new region.

A user is online while an edge that still reports holds a session for them,
and for `offline_timeout_s` after the last one closed or after that edge
fell silent. So a reconnect elsewhere within the timeout never flaps the
user offline and back, and an edge that dies stops counting after the
timeout.

Routing lasts longer than presence for a session whose edge fell silent
while it was open: the silence may be a region cut off from the hub, whose
deliveries the hub keeps until the link returns. Such a session keeps its
region in `regions_of` for `silent_route_s`, or until the edge reports again
without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from core.schema import PresenceReport, SessionOpen, UserPresence

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
# The hub keeps deliveries for 15 minutes (DELIVER_MAX_AGE_S in
# sync/streams.py); routing to a silent region for longer gains nothing.
SILENT_ROUTE_S = 15 * 60.0


@dataclass
class _Placement:
    """A user's session state on one edge."""

    region: str
    connected: bool
    # Wall-clock seconds when the session was last known to exist.
    seen_at: float


@dataclass
class _EdgeState:
    region: str
    reported_at: float
    report_seq: int = 0
    # Whether a full report arrived since this registry started.
    had_full: bool = False
    full_requested_at: float | None = None


@dataclass
class _UserState:
    placements: dict[str, _Placement] = field(default_factory=dict)


class SessionRegistry:
    """Presence state and routing lookups, fed by edge reports.

    Until one timeout has passed since start, the registry may not know every
    session, so `regions_of` returns every region then: a message is better
    sent to a region that drops it than lost to a region that wanted it.
    """

    def __init__(
        self,
        regions: Iterable[str],
        offline_timeout_s: float,
        clock: Clock = time.time,
        silent_route_s: float = SILENT_ROUTE_S,
        full_request_interval_s: float = 1.0,
    ) -> None:
        self._regions = frozenset(regions)
        self._timeout_s = offline_timeout_s
        self._silent_route_s = silent_route_s
        self._full_request_interval_s = full_request_interval_s
        self._clock = clock
        self._started = clock()
        self._users: dict[str, _UserState] = {}
        self._edges: dict[str, _EdgeState] = {}
        self._published: dict[str, UserPresence] = {}

    # ---- input ---------------------------------------------------------------

    def on_open(self, event: SessionOpen) -> None:
        now = self._clock()
        self._touch_edge(event.edge, event.region, now)
        self._place(event.user, event.edge, event.region, connected=True, now=now)
        log.debug(
            "sessions.opened", user=event.user, region=event.region, edge=event.edge
        )

    def on_report(self, report: PresenceReport) -> bool:
        """Apply an edge's report; return True to ask that edge for a full one.

        A full report is needed when this registry has not had one from the
        edge since it started (a restarted core has no sessions) or when
        reports went missing. It is asked for at most once per
        `full_request_interval_s`.
        """
        now = self._clock()
        edge = self._touch_edge(report.edge, report.region, now)
        gap = bool(edge.report_seq) and report.report_seq != edge.report_seq + 1
        if gap and not report.full:
            log.info(
                "sessions.report_gap", edge=report.edge, expected=edge.report_seq + 1
            )
        edge.report_seq = report.report_seq
        if report.full:
            edge.had_full = True
            edge.full_requested_at = None
            self._close_missing(report.edge, set(report.online), now)
        for user in report.online:
            self._place(user, report.edge, report.region, connected=True, now=now)
        for user in report.offline:
            self._place(user, report.edge, report.region, connected=False, now=now)
        return not report.full and (gap or not edge.had_full) and self._may_ask(edge)

    def _may_ask(self, edge: _EdgeState) -> bool:
        now = self._clock()
        last = edge.full_requested_at
        if last is not None and now - last < self._full_request_interval_s:
            return False
        edge.full_requested_at = now
        return True

    # ---- queries -------------------------------------------------------------

    def regions_of(self, user: str) -> set[str]:
        """Return the regions where `user` has, or recently had, a session.

        That includes the region of a session whose edge fell silent less
        than `silent_route_s` ago.
        """
        now = self._clock()
        if now - self._started < self._timeout_s:
            return set(self._regions)
        state = self._users.get(user)
        if state is None:
            return set()
        return {
            placement.region
            for edge, placement in state.placements.items()
            if self._routes(edge, placement, now)
        }

    def presence(self, user: str, last_seen_ms: int | None = None) -> UserPresence:
        """Return the user's presence; `last_seen_ms` is the stored fallback."""
        now = self._clock()
        state = self._users.get(user)
        best: tuple[str, _Placement] | None = None
        for edge, placement in state.placements.items() if state else []:
            if self._counts(edge, placement, now) and (
                best is None or self._live(edge, placement, now)
            ):
                best = (edge, placement)
        if best is not None:
            edge, placement = best
            return UserPresence(
                user=user, online=True, region=placement.region, edge=edge
            )
        seen = self._last_seen_ms(state)
        if seen is None or (last_seen_ms is not None and last_seen_ms > seen):
            seen = last_seen_ms
        return UserPresence(user=user, online=False, last_seen_ms=seen)

    def collect_changes(self) -> list[UserPresence]:
        """Return users whose online state or place changed since the last call."""
        changes = []
        for user in list(self._users):
            current = self.presence(user)
            before = self._published.get(user)
            if before is None or _moved(before, current):
                if before is not None or current.online:
                    changes.append(current)
                self._published[user] = current
        self._forget_offline()
        return changes

    def online_count(self) -> int:
        now = self._clock()
        return sum(
            1
            for state in self._users.values()
            if any(self._counts(e, p, now) for e, p in state.placements.items())
        )

    # ---- internals -----------------------------------------------------------

    def _touch_edge(self, edge: str, region: str, now: float) -> _EdgeState:
        state = self._edges.get(edge)
        if state is None:
            state = self._edges[edge] = _EdgeState(region=region, reported_at=now)
        state.reported_at = now
        return state

    def _place(
        self, user: str, edge: str, region: str, connected: bool, now: float
    ) -> None:
        state = self._users.setdefault(user, _UserState())
        current = state.placements.get(edge)
        if connected or current is None or current.connected:
            state.placements[edge] = _Placement(region, connected, now)

    def _close_missing(self, edge: str, online: set[str], now: float) -> None:
        for user, state in self._users.items():
            placement = state.placements.get(edge)
            if placement is not None and placement.connected and user not in online:
                placement.connected = False
                placement.seen_at = now

    def _live(self, edge: str, placement: _Placement, now: float) -> bool:
        """True while the session is open on an edge that still reports."""
        edge_state = self._edges.get(edge)
        alive = (
            edge_state is not None and now - edge_state.reported_at <= self._timeout_s
        )
        return placement.connected and alive

    def _counts(self, edge: str, placement: _Placement, now: float) -> bool:
        if self._live(edge, placement, now):
            return True
        return now - self._ended_at(edge, placement) <= self._timeout_s

    def _routes(self, edge: str, placement: _Placement, now: float) -> bool:
        if self._counts(edge, placement, now):
            return True
        # Still open when its edge went silent: the edge's region may be cut off.
        return (
            placement.connected
            and now - self._ended_at(edge, placement) <= self._silent_route_s
        )

    def _ended_at(self, edge: str, placement: _Placement) -> float:
        if placement.connected:
            edge_state = self._edges.get(edge)
            return edge_state.reported_at if edge_state else placement.seen_at
        return placement.seen_at

    def _last_seen_ms(self, state: _UserState | None) -> int | None:
        if state is None or not state.placements:
            return None
        ended = max(self._ended_at(e, p) for e, p in state.placements.items())
        return int(ended * 1000)

    def _forget_offline(self) -> None:
        """Drop users offline for long enough that nothing routes to them."""
        now = self._clock()
        for user in list(self._users):
            state = self._users[user]
            if not any(self._routes(e, p, now) for e, p in state.placements.items()):
                published = self._published.get(user)
                if published is not None and not published.online:
                    del self._users[user]


def _moved(before: UserPresence, after: UserPresence) -> bool:
    return (before.online, before.region, before.edge) != (
        after.online,
        after.region,
        after.edge,
    )
