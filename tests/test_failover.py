"""Client failover between regions: the regions list, failover and failback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx

from chatmesh.failover import FailoverClient, FailoverPolicy, http_base
from core.schema import MessageView
from tests.conftest import token_for
from topology.launcher import Mesh

# Shorter than the defaults, so that failback happens within a test's time.
FAST = FailoverPolicy(probe_interval_s=0.5, backoff_max_s=1.0)
RESUME_TIMEOUT_S = 20.0
# Long enough for the hub's source of the leaf's stream to fail more than
# once: nats-server then waits 20 s or more before it tries again. Measured
# on this test: 32 s from the send to its arrival without `SourceWatchdog`.
LEAF_DOWN_S = 25.0
FLOW_AGAIN_TIMEOUT_S = 10.0


def edge_of(mesh: Mesh, region: str) -> str:
    return mesh.edge_url(mesh.topology.get_region(region).edges[0].name)


async def failover_client(mesh: Mesh, user: str, region: str) -> FailoverClient:
    client = FailoverClient(edge_of(mesh, region), token_for(mesh, user), policy=FAST)
    await client.start()
    return client


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; fail after `RESUME_TIMEOUT_S`."""
    async with asyncio.timeout(RESUME_TIMEOUT_S):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


async def wait_in_region(client: FailoverClient, region: str) -> None:
    await eventually(lambda: client.region == region)


async def wait_shown(client: FailoverClient, contents: list[str]) -> list[MessageView]:
    await eventually(lambda: set(contents) <= {m.content for m in client.shown})
    return [m for m in client.shown if m.content in contents]


async def test_regions_endpoint_lists_nearest_first(mesh: Mesh) -> None:
    for region, expected in (
        ("eu-west", ["eu-west", "us-east"]),
        ("us-east", ["us-east", "eu-west"]),
    ):
        url = http_base(edge_of(mesh, region)) + "/v1/regions"
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(url)
        body = response.json()

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert body["region"] == region
        assert [r["name"] for r in body["regions"]] == expected
        first_edge = body["regions"][0]["edges"][0]
        assert first_edge["url"] == edge_of(mesh, region)
        assert first_edge["health_url"].endswith("/healthz")


async def test_client_fails_over_and_back(fresh_mesh: Mesh) -> None:
    alice = await failover_client(fresh_mesh, "alice", "eu-west")
    bob = await failover_client(fresh_mesh, "bob", "us-east")
    edge = fresh_mesh.processes["edge-eu-west-1"]
    try:
        assert alice.region == "eu-west"
        await alice.send("bob", "before")

        edge.kill()
        during = [f"during-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
        for text in during:
            await alice.send("bob", text)
        assert alice.region == "us-east"

        edge.start()
        await edge.wait_healthy(30)
        await wait_in_region(alice, "eu-west")
        await alice.send("bob", "after")

        shown = await wait_shown(bob, ["before", *during, "after"])
        assert [m.content for m in shown] == ["before", *during, "after"]
        assert [r.reason for r in alice.resumptions] == ["start", "closed", "failback"]
        assert alice.resumptions[1].to_region == "us-east"
    finally:
        await alice.close()
        await bob.close()


async def test_client_leaves_edge_whose_leaf_died(fresh_mesh: Mesh) -> None:
    alice = await failover_client(fresh_mesh, "alice", "eu-west")
    bob = await failover_client(fresh_mesh, "bob", "us-east")
    leaf = fresh_mesh.processes["leaf-eu-west"]
    try:
        leaf.stop()
        # The edge closes its clients' connections once its leaf is gone.
        await wait_in_region(alice, "us-east")
        await alice.send("bob", "from the other region")

        leaf.start()
        await leaf.wait_healthy(30)
        await wait_in_region(alice, "eu-west")
        # The leaf lost its in-memory delivery stream; the edge must have
        # created it again and read it, or this message never arrives.
        text = f"to the restarted region {uuid.uuid4().hex[:6]}"
        await bob.send("alice", text)

        await wait_shown(alice, [text])
        received = await wait_shown(bob, ["from the other region"])
        assert received[0].sender == "alice"
    finally:
        await alice.close()
        await bob.close()


async def test_region_messages_flow_soon_after_long_outage(fresh_mesh: Mesh) -> None:
    alice = await failover_client(fresh_mesh, "alice", "eu-west")
    bob = await failover_client(fresh_mesh, "bob", "us-east")
    leaf = fresh_mesh.processes["leaf-eu-west"]
    try:
        leaf.kill()
        await asyncio.sleep(LEAF_DOWN_S)
        leaf.start()
        await leaf.wait_healthy(30)
        await wait_in_region(alice, "eu-west")

        text = f"after the outage {uuid.uuid4().hex[:6]}"
        await alice.send("bob", text)
        async with asyncio.timeout(FLOW_AGAIN_TIMEOUT_S):
            await wait_shown(bob, [text])
    finally:
        await alice.close()
        await bob.close()
