"""The store goes away under load: nothing acknowledged is lost or stored twice."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from core.schema import CommittedEvent
from tests.conftest import Clients
from topology.launcher import Mesh

# Longer than SQLite's 5 s busy timeout and the Scylla driver's 5 s request
# timeout, so the core gets errors and has to retry.
OUTAGE_S = 12.0


@contextmanager
def store_outage(mesh: Mesh, request: pytest.FixtureRequest) -> Iterator[None]:
    """Make the core's store unusable until the block ends.

    SQLite: another connection holds an exclusive lock on the file.
    Scylla: the core's datacenter node is stopped with SIGSTOP.
    """
    if mesh.topology.store.backend == "sqlite":
        db = sqlite3.connect(mesh.layout.data / "chatmesh.db", timeout=1)
        db.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            db.rollback()
            db.close()
        return
    cluster = request.getfixturevalue("cql_cluster_two_dc")
    node = cluster.node_in(mesh.topology.core_store_region).node
    node.pause()
    try:
        yield
    finally:
        node.resume()


async def test_messages_survive_store_outage(
    fresh_clients: Clients, request: pytest.FixtureRequest
) -> None:
    mesh = fresh_clients.mesh
    alice = await fresh_clients.connect("alice", "eu-west")
    bob = await fresh_clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    await alice.send("bob", "before")
    await bob.wait_for_messages(1, timeout_s=20)

    sent = [f"during-{i}" for i in range(8)]
    with store_outage(mesh, request):
        for text in sent:
            # Accepting needs only the region's JetStream, not the store.
            await alice.send("bob", text, client_msg_id=text)
        # A resend while the store is down must not be stored twice.
        await alice.send("bob", sent[0], client_msg_id=sent[0])
        await asyncio.sleep(OUTAGE_S)
        assert len(bob.shown) == 1
        started = time.monotonic()

    shown = await bob.wait_for_messages(1 + len(sent), timeout_s=90)
    await asyncio.sleep(1.0)
    assert [m.content for m in bob.shown] == ["before", *sent]
    assert [m.seq for m in shown] == list(range(1, len(sent) + 2))
    assert time.monotonic() - started < 90

    commits = []
    while not alice.events.empty():
        event = alice.events.get_nowait()
        if isinstance(event, CommittedEvent):
            commits.append(event.id)
    assert set(sent) <= set(commits)

    log = (mesh.layout.logs / "core-0.log").read_text()
    assert "sequencer.store_retry" in log or "store.request_retry" in log
