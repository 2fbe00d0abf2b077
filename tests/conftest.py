"""Fixtures that run real meshes: nats-server, core and edge processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatmesh.client import ChatClient
from core.tokens import KeyStore, mint_token
from topology.launcher import Mesh
from topology.model import Topology, parse_topology

pytest_plugins = ["tests.cql_fixtures"]


def small_topology(
    name: str = "test-mesh", edges_per_region: int = 1, **extra: Any
) -> Topology:
    """Return a two-region topology on free ports, with fast presence timers."""
    regions = [
        {
            "name": region,
            "edges": [{"name": f"{region}-{i + 1}"} for i in range(edges_per_region)],
        }
        for region in ("eu-west", "us-east")
    ]
    raw = {
        "name": name,
        "hub": {"nodes": [{"name": "hub-1"}]},
        "regions": regions,
        "presence": {"report_interval_s": 0.2, "offline_timeout_s": 2.0},
        "dev_users": ["alice", "bob", "carol", "dave", "erin"],
        **extra,
    }
    return parse_topology(raw)


def start_mesh(topology: Topology, run_dir: Path) -> Mesh:
    mesh = Mesh(topology, run_dir)
    try:
        asyncio.run(mesh.start())
    except BaseException:
        mesh.stop()
        raise
    return mesh


STORE_BACKENDS = [
    pytest.param("sqlite"),
    pytest.param("scylla", marks=pytest.mark.cassandra),
]


def store_settings(request: pytest.FixtureRequest, backend: str) -> dict[str, Any]:
    """Return the topology's `store` section for `backend`.

    Scylla meshes use the session's two-datacenter Cassandra cluster, one
    datacenter per region, each mesh in a keyspace of its own.
    """
    if backend == "sqlite":
        return {"backend": "sqlite"}
    cluster = request.getfixturevalue("cql_cluster_two_dc")
    scylla = {
        "contact_points": cluster.contact_points,
        "port": cluster.port,
        "keyspace": f"mesh_{uuid.uuid4().hex[:12]}",
    }
    return {"backend": "scylla", "scylla": scylla}


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """A two-region mesh shared by the tests of one module, once per store backend."""
    topology = small_topology(store=store_settings(request, request.param))
    run = start_mesh(topology, tmp_path_factory.mktemp(f"mesh-{request.param}"))
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(params=STORE_BACKENDS)
def fresh_mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    """A two-region mesh of its own, for tests that stop or kill processes."""
    topology = small_topology(store=store_settings(request, request.param))
    run = start_mesh(topology, tmp_path / "mesh")
    try:
        yield run
    finally:
        run.stop()


def token_for(
    mesh: Mesh, user: str, ttl_s: int = 3600, now: float | None = None
) -> str:
    keys = KeyStore(mesh.layout.token_private_keys, mesh.layout.token_public_keys)
    return mint_token(keys.signing_key(), user, mesh.topology.name, ttl_s, now=now)


def region_edge_url(mesh: Mesh, region: str) -> str:
    return mesh.edge_url(mesh.topology.get_region(region).edges[0].name)


class Clients:
    """Opens chat clients against a mesh and closes them all at the end."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._open: list[ChatClient] = []

    async def connect(
        self, user: str, region: str, cursors: dict[str, int] | None = None
    ) -> ChatClient:
        url = region_edge_url(self.mesh, region)
        client = ChatClient(url, token_for(self.mesh, user), cursors)
        await client.connect()
        self._open.append(client)
        return client

    async def close_all(self) -> None:
        for client in self._open:
            await client.close()
        self._open.clear()


@pytest.fixture
async def clients(mesh: Mesh) -> AsyncIterator[Clients]:
    """Clients of the module's shared mesh."""
    opened = Clients(mesh)
    try:
        yield opened
    finally:
        await opened.close_all()


@pytest.fixture
async def fresh_clients(fresh_mesh: Mesh) -> AsyncIterator[Clients]:
    """Clients of a mesh of the test's own."""
    opened = Clients(fresh_mesh)
    try:
        yield opened
    finally:
        await opened.close_all()
