"""Presence through a real two-region mesh: state, pushes, timeouts, aggregation."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from chatmesh.client import ChatError
from core import subjects
from core.natsconn import connect_nats
from core.schema import PresenceEvent
from tests.conftest import Clients
from topology.render import hub_client_urls

TIMEOUT_S = 2.0  # the test topology's offline_timeout_s


async def contacts(clients: Clients, a: str, b: str) -> None:
    """Make `a` and `b` contacts by a 1-1 message."""
    sender = await clients.connect(a, "eu-west")
    await sender.send(b, "hi")
    await sender.close()


def change_for(user: str, online: bool):  # type: ignore[no-untyped-def]
    def match(event: object) -> bool:
        return (
            isinstance(event, PresenceEvent)
            and event.ref is None
            and any(s.user == user and s.online is online for s in event.users)
        )

    return match


async def test_two_devices_online_until_both_leave(clients: Clients) -> None:
    await contacts(clients, "alice", "bob")
    phone = await clients.connect("alice", "eu-west")
    laptop = await clients.connect("alice", "us-east")
    bob = await clients.connect("bob", "us-east")
    await asyncio.sleep(0.5)

    states = await bob.presence(["alice"], subscribe=True)
    assert states[0].online is True
    assert states[0].region in {"eu-west", "us-east"}

    await phone.close()
    await asyncio.sleep(TIMEOUT_S + 1)
    assert (await bob.presence(["alice"]))[0].online is True

    closed_at_ms = time.time() * 1000
    await laptop.close()
    change = await bob.wait_for(
        change_for("alice", online=False), timeout_s=TIMEOUT_S + 5
    )
    state = next(s for s in change.users if s.user == "alice")
    assert state.last_seen_ms is not None
    assert abs(state.last_seen_ms - closed_at_ms) < 1500


async def test_subscriber_sees_user_come_online(clients: Clients) -> None:
    await contacts(clients, "carol", "dave")
    dave = await clients.connect("dave", "eu-west")
    await asyncio.sleep(TIMEOUT_S + 0.5)  # carol's first session has expired
    before = await dave.presence(["carol"], subscribe=True)
    assert before[0].online is False

    await clients.connect("carol", "us-east")
    change = await dave.wait_for(change_for("carol", online=True), timeout_s=5)
    state = next(s for s in change.users if s.user == "carol")
    assert state.region == "us-east"


async def test_group_peer_may_watch_stranger_may_not(clients: Clients) -> None:
    owner = await clients.connect("alice", "eu-west")
    group = f"peers-{int(time.time() * 1000)}"
    await owner.group("create", group, members=["carol"])
    carol = await clients.connect("carol", "us-east")
    await asyncio.sleep(0.3)

    states = await carol.presence(["alice"])
    assert states[0].online is True

    stranger = await clients.connect("dave", "us-east")
    with pytest.raises(ChatError) as denied:
        await stranger.presence(["erin-unknown", "alice"])
    assert denied.value.code == "not_authorized"
    assert "erin-unknown" in denied.value.message


async def test_reconnect_elsewhere_within_timeout_does_not_flap(
    clients: Clients,
) -> None:
    await contacts(clients, "bob", "carol")
    bob = await clients.connect("bob", "eu-west")
    carol = await clients.connect("carol", "us-east")
    await asyncio.sleep(0.5)
    await carol.presence(["bob"], subscribe=True)

    await bob.close()
    await asyncio.sleep(TIMEOUT_S / 3)
    await clients.connect("bob", "us-east")
    await asyncio.sleep(TIMEOUT_S * 2)

    flaps = []
    while not carol.events.empty():
        event = carol.events.get_nowait()
        if change_for("bob", online=False)(event):
            flaps.append(event)
    assert flaps == []
    assert (await carol.presence(["bob"]))[0].region == "us-east"


async def test_hub_gets_one_report_per_edge_per_interval(clients: Clients) -> None:
    many = [
        await clients.connect(user, region)
        for user in ("alice", "bob", "carol", "dave")
        for region in ("eu-west", "us-east")
    ]
    mesh = clients.mesh
    nc = await connect_nats(hub_client_urls(mesh.topology), "test-ops", mesh.ops_auth())
    reports: list[dict] = []  # type: ignore[type-arg]

    async def on_report(msg) -> None:  # type: ignore[no-untyped-def]
        reports.append(json.loads(msg.data))

    window_s = 3.0
    await nc.subscribe(subjects.PRESENCE_REPORTS, cb=on_report)
    pings = 0
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        for client in many:
            await client.send_raw('{"type": "ping"}')
            pings += 1
        await asyncio.sleep(0.05)
    await nc.close()

    interval_s = clients.mesh.topology.presence.report_interval_s
    per_edge: dict[str, int] = {}
    for report in reports:
        per_edge[report["edge"]] = per_edge.get(report["edge"], 0) + 1
    assert set(per_edge) == {"eu-west-1", "us-east-1"}
    for count in per_edge.values():
        assert count <= window_s / interval_s + 1
    assert len(reports) < pings / 10


async def test_edge_death_takes_its_users_offline(fresh_clients: Clients) -> None:
    mesh = fresh_clients.mesh
    await contacts(fresh_clients, "alice", "bob")
    await fresh_clients.connect("alice", "eu-west")
    bob = await fresh_clients.connect("bob", "us-east")
    await asyncio.sleep(TIMEOUT_S + 0.5)  # past the registry's warm-up
    assert (await bob.presence(["alice"], subscribe=True))[0].online is True

    mesh.processes["edge-eu-west-1"].kill()
    change = await bob.wait_for(
        change_for("alice", online=False), timeout_s=TIMEOUT_S * 3 + 2
    )

    state = next(s for s in change.users if s.user == "alice")
    assert state.online is False
    assert state.last_seen_ms is not None


async def test_presence_rejects_too_many_users(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    with pytest.raises(ChatError) as caught:
        await alice.presence([f"user{i}" for i in range(501)])
    assert caught.value.code == "malformed_frame"


async def test_query_of_offline_contact_has_last_seen(clients: Clients) -> None:
    await contacts(clients, "dave", "erin")
    erin = await clients.connect("erin", "us-east")
    await asyncio.sleep(TIMEOUT_S * 2 + 1.5)
    states = await erin.presence(["dave"])
    assert states[0].online is False
    assert states[0].last_seen_ms is not None
