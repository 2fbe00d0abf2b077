"""Session affinity with two edges in a region, against real edge processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chatmesh.client import ChatClient
from edge.affinity import owner_edge
from tests.conftest import small_topology, start_mesh, token_for
from topology.launcher import Mesh


@pytest.fixture(scope="module")
def two_edge_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = start_mesh(
        small_topology("two-edges", edges_per_region=2),
        tmp_path_factory.mktemp("mesh2"),
    )
    try:
        yield mesh
    finally:
        mesh.stop()


async def test_every_connection_lands_on_owner(two_edge_mesh: Mesh) -> None:
    edges = ["eu-west-1", "eu-west-2"]
    users = ["alice", "bob", "carol", "dave"]
    owners = {user: owner_edge(user, edges) for user in users}
    assert len(set(owners.values())) == 2, "test users should spread over both edges"

    clients = []
    try:
        for user in users:
            for edge in edges:  # each user tries both edges
                client = ChatClient(
                    two_edge_mesh.edge_url(edge), token_for(two_edge_mesh, user)
                )
                hello = await client.connect()
                clients.append(client)
                assert hello.edge == owners[user]
    finally:
        for client in clients:
            await client.close()


async def test_route_endpoint_names_owner(two_edge_mesh: Mesh) -> None:
    edge = two_edge_mesh.topology.get_region("eu-west").edges[1]
    async with httpx.AsyncClient() as http:
        reply = await http.get(
            f"http://{edge.host}:{edge.port}/v1/route", params={"user": "alice"}
        )
        bad = await http.get(
            f"http://{edge.host}:{edge.port}/v1/route", params={"user": "Not Valid"}
        )
    assert reply.status_code == 200
    assert reply.json()["edge"] == owner_edge("alice", ["eu-west-1", "eu-west-2"])
    assert bad.status_code == 400
    assert "Not Valid" in bad.json()["message"]


async def test_delivery_reaches_both_edges_of_region(
    two_edge_mesh: Mesh, tmp_path: Path
) -> None:
    bob = ChatClient(
        two_edge_mesh.edge_url("us-east-1"), token_for(two_edge_mesh, "bob")
    )
    carol = ChatClient(
        two_edge_mesh.edge_url("eu-west-1"), token_for(two_edge_mesh, "carol")
    )
    dave = ChatClient(
        two_edge_mesh.edge_url("eu-west-1"), token_for(two_edge_mesh, "dave")
    )
    try:
        for client in (bob, carol, dave):
            await client.connect()
            await client.sync()
        assert carol.hello is not None and dave.hello is not None
        await bob.send("carol", "to carol")
        await bob.send("dave", "to dave")
        got_carol = await carol.wait_for_messages(1)
        got_dave = await dave.wait_for_messages(1)
        assert got_carol[-1].content == "to carol"
        assert got_dave[-1].content == "to dave"
    finally:
        for client in (bob, carol, dave):
            await client.close()
