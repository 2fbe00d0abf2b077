"""The session registry: routing, presence, timeouts and change batches."""

from __future__ import annotations

from core.schema import PresenceReport, SessionOpen
from core.sessions import SessionRegistry
from edge.presence import FULL_REPORT_EVERY, next_report
from edge.sessions import Connection, LocalSessions

TIMEOUT_S = 10.0


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def report(
    edge: str,
    seq: int,
    online: list[str],
    offline: list[str] | None = None,
    full: bool = False,
) -> PresenceReport:
    region = edge.rsplit("-", 1)[0]
    return PresenceReport(
        region=region,
        edge=edge,
        report_seq=seq,
        full=full,
        online=online,
        offline=offline or [],
        sent_at_ms=0,
    )


def warmed(clock: FakeClock) -> SessionRegistry:
    registry = SessionRegistry(["eu", "us"], TIMEOUT_S, clock=clock)
    clock.now += TIMEOUT_S + 1
    return registry


def test_routes_everywhere_while_warming_up() -> None:
    clock = FakeClock()
    registry = SessionRegistry(["eu", "us"], TIMEOUT_S, clock=clock)
    assert registry.regions_of("alice") == {"eu", "us"}
    clock.now += TIMEOUT_S + 1
    assert registry.regions_of("alice") == set()


def test_open_routes_at_once() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_open(SessionOpen(user="alice", region="eu", edge="eu-1"))
    assert registry.regions_of("alice") == {"eu"}
    assert registry.presence("alice").online is True
    assert registry.presence("alice").edge == "eu-1"


def test_user_with_two_devices_online_while_any_connected() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice"], full=True))
    registry.on_report(report("us-1", 1, ["alice"], full=True))
    clock.now += 1
    registry.on_report(report("eu-1", 2, [], ["alice"]))
    registry.on_report(report("us-1", 2, []))
    clock.now += TIMEOUT_S + 1
    registry.on_report(report("us-1", 3, []))
    assert registry.presence("alice").online is True
    assert registry.regions_of("alice") == {"us"}


def test_disconnect_goes_offline_after_timeout_with_last_seen() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice"], full=True))
    registry.collect_changes()
    clock.now += 2
    registry.on_report(report("eu-1", 2, [], ["alice"]))
    left_at_ms = int(clock.now * 1000)
    clock.now += TIMEOUT_S - 1
    registry.on_report(report("eu-1", 3, []))
    assert registry.presence("alice").online is True
    assert registry.collect_changes() == []
    clock.now += 2
    registry.on_report(report("eu-1", 4, []))
    changes = registry.collect_changes()
    assert [(c.user, c.online, c.last_seen_ms) for c in changes] == [
        ("alice", False, left_at_ms)
    ]


def test_reconnect_elsewhere_within_timeout_does_not_flap() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice"], full=True))
    registry.collect_changes()
    clock.now += 1
    registry.on_report(report("eu-1", 2, [], ["alice"]))
    clock.now += 3
    registry.on_open(SessionOpen(user="alice", region="us", edge="us-1"))
    changes = []
    for step in range(30):
        clock.now += 1
        registry.on_report(report("eu-1", 3 + step, []))
        registry.on_report(
            report("us-1", 1 + step, ["alice"] if step == 0 else [], full=step == 0)
        )
        changes += registry.collect_changes()
    assert all(change.online for change in changes)
    assert changes[-1].region == "us"


def test_dead_edge_stops_counting_after_timeout() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice", "bob"], full=True))
    registry.on_report(report("us-1", 1, ["carol"], full=True))
    registry.collect_changes()
    died_at_ms = int(clock.now * 1000)
    for seq in range(2, 14):
        clock.now += 1
        registry.on_report(report("us-1", seq, []))
    changes = {c.user: c for c in registry.collect_changes()}
    assert set(changes) == {"alice", "bob"}
    assert changes["alice"].online is False
    assert changes["alice"].last_seen_ms == died_at_ms
    assert registry.presence("carol").online is True


def test_full_report_closes_sessions_missing_from_it() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice", "bob"], full=True))
    clock.now += 1
    registry.on_report(report("eu-1", 11, ["bob"], full=True))  # a missed delta
    clock.now += TIMEOUT_S + 1
    registry.on_report(report("eu-1", 12, []))
    assert registry.presence("alice").online is False
    assert registry.presence("bob").online is True


def test_stored_last_seen_used_for_unknown_user() -> None:
    registry = warmed(FakeClock())
    state = registry.presence("zed", last_seen_ms=1234)
    assert state.online is False
    assert state.last_seen_ms == 1234


def test_edge_report_carries_only_changes() -> None:
    sessions = LocalSessions()
    first = next_report(sessions, "eu", "eu-1", 1)
    a, b = Connection("eu-1", "alice"), Connection("eu-1", "alice")
    sessions.add(a)
    sessions.add(b)
    sessions.add(Connection("eu-1", "bob"))
    second = next_report(sessions, "eu", "eu-1", 2)
    sessions.remove(a)
    third = next_report(sessions, "eu", "eu-1", 3)
    sessions.remove(b)
    fourth = next_report(sessions, "eu", "eu-1", 4)
    full = next_report(sessions, "eu", "eu-1", FULL_REPORT_EVERY + 1)

    assert first.full is True
    assert (second.online, second.offline) == (["alice", "bob"], [])
    assert (third.online, third.offline) == ([], [])
    assert (fourth.online, fourth.offline) == ([], ["alice"])
    assert full.full is True
    assert full.online == ["bob"]


def test_silent_edge_keeps_routing_after_presence_ends() -> None:
    # A region cut off from the hub stops reporting: its users go offline,
    # but deliveries keep going to the region, where the hub holds them.
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice"], full=True))
    clock.now += TIMEOUT_S + 5

    assert registry.presence("alice").online is False
    assert registry.regions_of("alice") == {"eu"}

    registry.on_report(report("eu-1", 2, [], full=True))
    clock.now += TIMEOUT_S + 1
    assert registry.regions_of("alice") == set()


def test_silent_edge_routing_ends_after_limit() -> None:
    clock = FakeClock()
    registry = SessionRegistry(["eu", "us"], TIMEOUT_S, clock=clock, silent_route_s=60)
    clock.now += TIMEOUT_S + 1
    registry.on_report(report("eu-1", 1, ["alice"], full=True))

    clock.now += 59
    assert registry.regions_of("alice") == {"eu"}
    clock.now += 2
    assert registry.regions_of("alice") == set()


def test_closed_session_stops_routing_after_timeout() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice"], full=True))
    registry.on_report(report("eu-1", 2, [], ["alice"]))

    clock.now += TIMEOUT_S + 1

    assert registry.regions_of("alice") == set()


def test_registry_asks_for_full_report_until_it_has_one() -> None:
    clock = FakeClock()
    registry = SessionRegistry(
        ["eu", "us"], TIMEOUT_S, clock=clock, full_request_interval_s=2.0
    )

    assert registry.on_report(report("eu-1", 7, ["alice"])) is True
    clock.now += 1
    assert registry.on_report(report("eu-1", 8, [])) is False  # asked already
    clock.now += 1.5
    assert registry.on_report(report("eu-1", 9, [])) is True
    assert registry.on_report(report("eu-1", 10, ["alice"], full=True)) is False
    assert registry.on_report(report("eu-1", 11, [])) is False


def test_registry_asks_for_full_report_after_gap() -> None:
    clock = FakeClock()
    registry = warmed(clock)
    registry.on_report(report("eu-1", 1, ["alice"], full=True))

    assert registry.on_report(report("eu-1", 2, [])) is False
    assert registry.on_report(report("eu-1", 5, [])) is True
