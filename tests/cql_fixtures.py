"""Session-scoped pytest fixtures that run real Cassandra nodes as CQL servers.

Load them with `pytest_plugins = ["tests.cql_fixtures"]` in tests/conftest.py,
or with `python -m pytest -p tests.cql_fixtures`. Each fixture picks free ports
and a fresh temporary work directory, so the single node and the
two-datacenter cluster can run in the same session.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from topology.cql_server import CqlNode, CqlNodeSpec, start_cluster

# A session that uses both fixtures runs three JVMs at once. With a 768 MB
# maximum heap each node measured about 0.7 GB RSS through these tests on a
# 2-core machine, and at most about 1.2 GB once the heap is full, so the three
# stay under 4 GB while Cassandra keeps enough heap for test-sized data.
TEST_HEAP_MB = 768
SEED_ADDRESS = "127.0.0.1"
SECOND_DC_ADDRESS = "127.0.0.2"
PORT_SEARCH_ATTEMPTS = 50


@dataclass(frozen=True)
class RunningCqlNode:
    """A started node, with the contact point and port a driver connects to."""

    node: CqlNode

    @property
    def contact_point(self) -> str:
        return self.node.spec.address

    @property
    def port(self) -> int:
        return self.node.spec.native_port

    @property
    def datacenter(self) -> str:
        return self.node.spec.datacenter


@dataclass(frozen=True)
class RunningCqlCluster:
    """Started nodes that share one native port on different loopback addresses."""

    nodes: tuple[RunningCqlNode, ...]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def contact_points(self) -> list[str]:
        return [node.contact_point for node in self.nodes]

    def node_in(self, datacenter: str) -> RunningCqlNode:
        """Return the first node of `datacenter`."""
        for node in self.nodes:
            if node.datacenter == datacenter:
                return node
        raise KeyError(f"no node in datacenter {datacenter!r}")


def free_port(addresses: Sequence[str], exclude: Sequence[int] = ()) -> int:
    """Return a TCP port that is free on every address in `addresses`.

    Another process may still take the port before the node binds it.
    """
    for _ in range(PORT_SEARCH_ATTEMPTS):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port: int = probe.getsockname()[1]
        if port not in exclude and all(_is_free(a, port) for a in addresses[1:]):
            return port
    raise RuntimeError(
        f"no free port on {addresses} after {PORT_SEARCH_ATTEMPTS} tries"
    )


def _is_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _stop_all(nodes: Sequence[CqlNode]) -> None:
    for node in reversed(nodes):
        node.stop()


@pytest.fixture(scope="session")
def cql_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCqlNode]:
    """One Cassandra node on 127.0.0.1 in datacenter `eu-west`."""
    native_port = free_port([SEED_ADDRESS])
    spec = CqlNodeSpec(
        name="cql-single",
        address=SEED_ADDRESS,
        native_port=native_port,
        storage_port=free_port([SEED_ADDRESS], exclude=[native_port]),
        datacenter="eu-west",
        token=0,
        work_dir=tmp_path_factory.mktemp("cql-single"),
        heap_mb=TEST_HEAP_MB,
        cluster_name="chatmesh-single",
        unsafe_system=True,
    )
    nodes = start_cluster([spec])
    try:
        yield RunningCqlNode(nodes[0])
    finally:
        _stop_all(nodes)


@pytest.fixture(scope="session")
def cql_cluster_two_dc(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningCqlCluster]:
    """Two nodes: 127.0.0.1 in `eu-west` (the seed) and 127.0.0.2 in `us-east`."""
    addresses = [SEED_ADDRESS, SECOND_DC_ADDRESS]
    native_port = free_port(addresses)
    storage_port = free_port(addresses, exclude=[native_port])
    seed = f"{SEED_ADDRESS}:{storage_port}"
    specs = [
        CqlNodeSpec(
            name=f"cql-{datacenter}",
            address=address,
            native_port=native_port,
            storage_port=storage_port,
            datacenter=datacenter,
            token=token,
            work_dir=tmp_path_factory.mktemp(f"cql-{datacenter}"),
            seeds=(seed,),
            heap_mb=TEST_HEAP_MB,
            cluster_name="chatmesh-two-dc",
            unsafe_system=True,
        )
        for address, datacenter, token in (
            (SEED_ADDRESS, "eu-west", -(2**62)),
            (SECOND_DC_ADDRESS, "us-east", 2**62),
        )
    ]
    nodes = start_cluster(specs)
    try:
        yield RunningCqlCluster(tuple(RunningCqlNode(node) for node in nodes))
    finally:
        _stop_all(nodes)
