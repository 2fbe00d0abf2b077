"""1-1 chat through a real two-region mesh: delivery, sync, dedup, outages."""

from __future__ import annotations

import asyncio
import uuid

from chatmesh.client import ChatClient
from core.schema import CommittedEvent
from tests.conftest import Clients


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_message_crosses_regions(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    bob = await clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    text = unique("hello")

    accepted = await alice.send("bob", text)
    committed = await alice.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == accepted.id
    )
    received = await bob.wait_for(
        lambda e: getattr(e, "message", None) is not None and e.message.content == text
    )

    assert accepted.duplicate is False
    assert received.message.sender == "alice"
    assert received.message.conversation == "dm:alice:bob"
    assert received.message.seq == committed.seq
    assert received.message.message_id == committed.message_id


async def test_sender_other_device_gets_message(clients: Clients) -> None:
    phone = await clients.connect("carol", "eu-west")
    laptop = await clients.connect("carol", "us-east")
    await phone.sync()
    await laptop.sync()
    text = unique("multi-device")

    await phone.send("dave", text)
    seen = await laptop.wait_for(
        lambda e: getattr(e, "message", None) is not None and e.message.content == text
    )

    assert seen.message.sender == "carol"


async def test_offline_recipient_syncs_in_order_in_other_region(
    clients: Clients,
) -> None:
    sender = await clients.connect("alice", "eu-west")
    await sender.sync()
    texts = [unique(f"offline-{i}") for i in range(5)]
    for text in texts:
        await sender.send("dave", text)
    await _wait_committed(sender, 5)

    # dave was never online; he first connects in the other region.
    dave = await clients.connect("dave", "us-east")
    await dave.sync()
    mine = [m.content for m in dave.shown if m.conversation == "dm:alice:dave"]

    assert mine[-5:] == texts
    seqs = [m.seq for m in dave.shown if m.conversation == "dm:alice:dave"]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_reconnect_with_cursor_gets_only_missed(clients: Clients) -> None:
    bob = await clients.connect("bob", "us-east")
    await bob.sync()
    cursors = dict(bob.cursors)
    await bob.close()

    alice = await clients.connect("alice", "eu-west")
    await alice.sync()
    missed = [unique(f"missed-{i}") for i in range(3)]
    for text in missed:
        await alice.send("bob", text)
    await _wait_committed(alice, 3)

    again = await clients.connect("bob", "eu-west", cursors=cursors)
    await again.sync()

    assert [m.content for m in again.shown] == missed


async def test_resend_same_client_id_is_stored_once(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    bob = await clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    start = bob.cursors.get("dm:alice:bob", 0)
    client_id = unique("dup")

    first = await alice.send("bob", "only once", client_msg_id=client_id)
    second = await alice.send("bob", "only once", client_msg_id=client_id)
    await bob.wait_for(
        lambda e: (
            getattr(e, "message", None) is not None
            and e.message.client_msg_id == client_id
        )
    )
    # A later message proves nothing else with that id is still in flight.
    await alice.send("bob", "after the duplicate")
    await bob.wait_for(
        lambda e: (
            getattr(e, "message", None) is not None
            and e.message.content == "after the duplicate"
        )
    )

    copies = [m for m in bob.shown if m.client_msg_id == client_id]
    assert first.duplicate is False
    assert second.duplicate is True
    assert len(copies) == 1
    assert bob.cursors["dm:alice:bob"] == start + 2

    fresh = await clients.connect("bob", "eu-west", cursors={"dm:alice:bob": start})
    await fresh.sync()
    assert [m.client_msg_id for m in fresh.shown].count(client_id) == 1


async def test_resend_after_dedup_window_is_stored_once(clients: Clients) -> None:
    # A resend from another edge skips the leaf stream's dedup window: the
    # store's (sender, client message id) key must catch it.
    alice_eu = await clients.connect("alice", "eu-west")
    alice_us = await clients.connect("alice", "us-east")
    bob = await clients.connect("bob", "us-east")
    for client in (alice_eu, alice_us, bob):
        await client.sync()
    client_id = unique("cross-edge")

    await alice_eu.send("bob", "cross edge", client_msg_id=client_id)
    again = await alice_us.send("bob", "cross edge", client_msg_id=client_id)
    await alice_us.send("bob", "marker")
    await bob.wait_for(
        lambda e: (
            getattr(e, "message", None) is not None and e.message.content == "marker"
        )
    )

    assert again.duplicate is False  # different leaf stream, so not caught there
    assert [m.client_msg_id for m in bob.shown].count(client_id) == 1


async def test_messages_accepted_while_hub_down_arrive_after_restart(
    fresh_clients: Clients,
) -> None:
    mesh = fresh_clients.mesh
    alice = await fresh_clients.connect("alice", "eu-west")
    bob = await fresh_clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    await alice.send("bob", "before the outage")
    await bob.wait_for_messages(1)

    hub = mesh.processes["hub-1"]
    hub.stop()
    during = [unique(f"during-{i}") for i in range(10)]
    for text in during:
        accepted = await alice.send("bob", text)
        assert accepted.duplicate is False
    hub.start()
    await hub.wait_healthy(30)

    shown = await bob.wait_for_messages(11, timeout_s=60)
    assert [m.content for m in shown[1:]] == during
    assert [m.seq for m in shown] == list(range(1, 12))


async def _wait_committed(client: ChatClient, count: int) -> None:
    seen = 0
    async with asyncio.timeout(15):
        while seen < count:
            if isinstance(await client.events.get(), CommittedEvent):
                seen += 1
