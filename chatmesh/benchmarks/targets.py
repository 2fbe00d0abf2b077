"""The benchmark's targets: a chatmesh mesh, the bare relay, or bare NATS.

`MeshUnderTest` is a mesh the benchmark started (default topology on free
ports in a temporary run directory, optionally with delay proxies between
leaves and hub) or one already running, found through its run directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from chatmesh.benchmarks.clients import (
    BenchClient,
    NatsClient,
    Recorder,
    WebSocketClient,
)
from chatmesh.benchmarks.delay_proxy import DelayProxy
from chatmesh.benchmarks.load import Plan
from chatmesh.paths import read_endpoints
from core import subjects
from core.errors import ChatmeshError
from core.natsconn import NatsAuth
from edge.affinity import owner_edge
from topology.credentials import OPS_USER, client_auth
from topology.launcher import (
    Mesh,
    RunLayout,
    dev_token_signer,
    free_port,
    resolve_ports,
)
from topology.model import Topology, parse_topology, unthrottled_rates
from topology.processes import ManagedProcess

log = structlog.get_logger(__name__)

CONNECT_CONCURRENCY = 32
RELAY_READY_TIMEOUT_S = 30.0
TARGETS = ("mesh", "relay", "nats")


def with_free_ports(topology: Topology) -> Topology:
    """Return `topology` on free ports, without per-client rate limits.

    Its leaf links carry the bare-NATS baseline's subjects.
    """
    data = topology.model_dump()
    for node in data["hub"]["nodes"]:
        for key in ("client_port", "cluster_port", "leaf_port", "monitor_port"):
            node[key] = 0
    for region in data["regions"]:
        region["leaf"]["client_port"] = 0
        region["leaf"]["monitor_port"] = 0
        for edge in region["edges"]:
            edge["port"] = 0
    data["core"]["metrics_port"] = 0
    data["limits"].update(unthrottled_rates())
    data["links"]["benchmark_subjects"] = True
    return parse_topology(data)


@dataclass
class MeshUnderTest:
    """The endpoints, pids and token signer of the mesh being measured."""

    topology: Topology
    endpoints: dict[str, Any]
    sign: Callable[[str], str]
    nats_auth: NatsAuth | None = None
    mesh: Mesh | None = None
    proxies: list[DelayProxy] = field(default_factory=list)

    @property
    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in self.endpoints.get("pids", {}).items()}

    @property
    def metrics_urls(self) -> dict[str, str]:
        return dict(self.endpoints.get("metrics", {}))

    def edge_url(self, user: str, region_index: int) -> str:
        """Return the URL of the edge that owns `user` in the region at that index."""
        region = self.topology.regions[region_index % len(self.topology.regions)]
        owner = owner_edge(user, [e.name for e in region.edges])
        return str(self.endpoints["regions"][region.name]["edges"][owner])

    def leaf_url(self, region_index: int) -> str:
        region = self.topology.regions[region_index % len(self.topology.regions)]
        return str(self.endpoints["regions"][region.name]["leaf"])

    async def stop(self) -> None:
        if self.mesh is not None:
            self.mesh.stop()
        for proxy in self.proxies:
            await proxy.stop()


async def start_mesh(topology: Topology, run_dir: Path, rtt_ms: float) -> MeshUnderTest:
    """Start a mesh on free ports; with `rtt_ms`, delay every leaf-hub link."""
    resolved = resolve_ports(with_free_ports(topology))
    proxies: list[DelayProxy] = []
    leaf_urls: dict[str, list[str]] = {}
    if rtt_ms > 0:
        hub = resolved.hub.nodes[0]
        for region in resolved.regions:
            proxy = DelayProxy(hub.host, hub.leaf_port, rtt_ms / 2000)
            port = await proxy.start()
            proxies.append(proxy)
            leaf_urls[region.name] = [f"nats-leaf://127.0.0.1:{port}"]
    mesh = Mesh(resolved, run_dir, leaf_hub_urls=leaf_urls)
    try:
        await mesh.start()
    except BaseException:
        mesh.stop()
        for proxy in proxies:
            await proxy.stop()
        raise
    return MeshUnderTest(
        topology=mesh.topology,
        endpoints=mesh.endpoints(),
        sign=dev_token_signer(mesh.layout, mesh.topology.name),
        nats_auth=mesh.ops_auth(),
        mesh=mesh,
        proxies=proxies,
    )


def attach_mesh(run_dir: Path) -> MeshUnderTest:
    """Use a mesh that `chatmesh up` runs in `run_dir`."""
    layout = RunLayout(run_dir)
    endpoints = read_endpoints(run_dir)
    topology = parse_topology(json.loads(layout.topology.read_text()))
    return MeshUnderTest(
        topology,
        endpoints,
        dev_token_signer(layout, topology.name),
        client_auth(topology, layout.nats_secrets, OPS_USER),
    )


@dataclass
class Target:
    """Connected clients of one target, with the pids to measure and a cleanup."""

    name: str
    clients: list[BenchClient]
    pids: dict[str, int]
    metrics_urls: dict[str, str]
    cleanup: Callable[[], Awaitable[None]]


async def connect_all(clients: list[BenchClient]) -> None:
    """Connect every client, a bounded number at a time."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(client: BenchClient) -> None:
        async with gate:
            await client.connect()

    await asyncio.gather(*(connect(c) for c in clients))


async def close_all(clients: list[BenchClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def create_groups(clients: list[BenchClient], plan: Plan) -> None:
    """Have the first member of each group create it with the others as members."""
    by_user = {c.user: c for c in clients}
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def create(group: str, members: list[str]) -> None:
        async with gate:
            await by_user[members[0]].create_group(group, members)

    await asyncio.gather(*(create(g, m) for g, m in plan.group_members.items()))


async def mesh_target(
    mut: MeshUnderTest, plan: Plan, recorder: Recorder, window: int
) -> Target:
    clients: list[BenchClient] = [
        WebSocketClient(mut.edge_url(user, i), mut.sign(user), user, recorder, window)
        for i, user in enumerate(plan.users)
    ]
    await _connect_or_close(clients)
    await create_groups(clients, plan)

    async def cleanup() -> None:
        await close_all(clients)

    return Target("mesh", clients, mut.pids, mut.metrics_urls, cleanup)


async def relay_target(
    work_dir: Path, plan: Plan, recorder: Recorder, window: int
) -> Target:
    port = free_port()
    process = ManagedProcess(
        "relay",
        [sys.executable, "-m", "chatmesh.benchmarks.relay", "--port", str(port)],
        work_dir / "relay.log",
        _http_ok(f"http://127.0.0.1:{port}/healthz"),
    )
    process.start()
    try:
        await process.wait_healthy(RELAY_READY_TIMEOUT_S)
        url = f"ws://127.0.0.1:{port}/v1/ws"
        clients: list[BenchClient] = [
            WebSocketClient(url, user, user, recorder, window) for user in plan.users
        ]
        await _connect_or_close(clients)
        await create_groups(clients, plan)
    except BaseException:
        process.stop()
        raise

    async def cleanup() -> None:
        await close_all(clients)
        process.stop()

    assert process.pid is not None
    return Target("relay", clients, {"relay": process.pid}, {}, cleanup)


async def nats_target(
    mut: MeshUnderTest, plan: Plan, recorder: Recorder, window: int
) -> Target:
    """Clients on the mesh's leaf nodes, so cross-region messages cross the hub."""
    if not mut.topology.links.benchmark_subjects:
        raise ChatmeshError(
            "the mesh's leaf links do not carry the bare-NATS baseline's "
            f"subjects ({subjects.BENCHMARK_PREFIX}.>); set "
            "links.benchmark_subjects: true in its topology, or run the "
            "benchmark without --run-dir so that it starts a mesh of its own"
        )
    prefix = f"{subjects.BENCHMARK_PREFIX}.{uuid.uuid4().hex[:8]}"
    nats_clients = [
        NatsClient(mut.leaf_url(i), prefix, user, recorder, window, mut.nats_auth)
        for i, user in enumerate(plan.users)
    ]
    clients: list[BenchClient] = list(nats_clients)
    await _connect_or_close(clients)
    for client in nats_clients:
        group = plan.group_of.get(client.user)
        if group is not None:
            await client.join_group(group)
    # Interest crosses leaf links asynchronously; let it settle before sending.
    await asyncio.sleep(1.0)
    pids = {
        name: pid for name, pid in mut.pids.items() if name.startswith(("hub", "leaf"))
    }

    async def cleanup() -> None:
        await close_all(clients)

    return Target("nats", clients, pids, {}, cleanup)


async def _connect_or_close(clients: list[BenchClient]) -> None:
    try:
        await connect_all(clients)
    except BaseException:
        await close_all(clients)
        raise


def _http_ok(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(url)).status_code == 200

    return check
