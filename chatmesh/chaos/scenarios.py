"""The faults of the chaos suite, each with the time it lasts in either form.

Faults aim at the topology's first region unless their summary names
another target. Store faults aim at the core's store region
(`core.store_region`). A killed process is held down for the fault's
duration, then the launcher's supervisor restarts it, so a fault ends when
its process starts again, not when it is healthy again: catch-up times
include the restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chatmesh.chaos.measure import FaultWindow
from core import subjects
from core.natsconn import close_nats, connect_nats
from topology.chaos import Chaos, ChaosError
from topology.launcher import Mesh
from topology.model import Topology
from topology.render import hub_client_urls


@dataclass(frozen=True)
class Form:
    """The size and timing of a run; durations in seconds."""

    name: str
    clients: int
    # Between two sends of one client.
    interval_s: float
    warmup_s: float
    fault_s: float
    # How long a crashed core worker stays down before its restart.
    crash_down_s: float
    # Load after the fault ends, before the checks.
    after_s: float
    # The maximum wait for catch-up, presence and recovery.
    settle_timeout_s: float


SHORT = Form(
    name="short",
    clients=8,
    interval_s=0.5,
    warmup_s=3.0,
    fault_s=5.0,
    crash_down_s=1.0,
    after_s=4.0,
    settle_timeout_s=60.0,
)
LONG = Form(
    name="long",
    clients=16,
    interval_s=0.5,
    warmup_s=10.0,
    fault_s=30.0,
    crash_down_s=5.0,
    after_s=15.0,
    settle_timeout_s=180.0,
)
FORMS = {form.name: form for form in (SHORT, LONG)}
# Clients notice a frozen edge only when a WebSocket ping goes unanswered,
# which takes up to ping_interval_s + ping_timeout_s + close_timeout_s (6 s
# in the default FailoverPolicy), so a freeze lasts at least this long.
FREEZE_MIN_S = 10.0


@dataclass(frozen=True)
class FaultContext:
    """The target of a fault: the mesh, its chaos controls and the run's form."""

    mesh: Mesh
    chaos: Chaos
    form: Form

    @property
    def region(self) -> str:
        """The region that faults aim at: the topology's first."""
        return self.mesh.topology.regions[0].name

    @property
    def edge_process(self) -> str:
        return f"edge-{self.mesh.topology.regions[0].edges[0].name}"


FaultRun = Callable[[FaultContext], Awaitable[FaultWindow]]


@dataclass(frozen=True)
class Scenario:
    """A named fault and what the topology needs for it."""

    name: str
    summary: str
    run_fault: FaultRun
    needs_clustered_hub: bool = False
    needs_link_proxy: bool = False
    # The fault acts on the store: the SQLite write lock, or a store node.
    needs_store_fault: bool = False
    # The fault kills a store node, which only a Cassandra store has.
    needs_store_node: bool = False

    def unsupported_reason(self, topology: Topology) -> str | None:
        """Return why `topology` cannot run this scenario, or None if it can."""
        store = topology.store
        if self.needs_clustered_hub and len(topology.hub.nodes) < 3:
            return "it needs a hub of at least three nodes"
        if self.needs_clustered_hub and topology.hub.stream_replicas < 3:
            return "it needs hub streams with three replicas"
        if self.needs_link_proxy and not topology.links.proxy:
            return "it needs the link proxy (links: {proxy: true})"
        if self.needs_store_node and store.backend == "sqlite":
            return (
                "a SQLite store runs inside the core worker's process, so it has "
                "no node of its own to kill (core-dies kills the core worker); "
                "run it with --store scylla (or store.backend: scylla)"
            )
        needs_store = self.needs_store_fault or self.needs_store_node
        if needs_store and store.backend == "scylla" and not store.scylla.local_nodes:
            return (
                "it needs store nodes that the launcher runs "
                "(store.scylla.local_nodes: true, or --store scylla)"
            )
        return None


def supported_scenarios(topology: Topology) -> list[Scenario]:
    """Return the scenarios that `topology` can run, in the suite's order."""
    return [s for s in SCENARIOS if s.unsupported_reason(topology) is None]


async def kill_for(
    ctx: FaultContext, names: list[str], down_s: float, description: str
) -> FaultWindow:
    targets = ctx.chaos.select(names)
    started = time.monotonic()
    ctx.chaos.kill(targets, down_for_s=down_s)
    await asyncio.sleep(down_s)
    return FaultWindow(description, started, time.monotonic())


async def edge_dies(ctx: FaultContext) -> FaultWindow:
    edge, down_s = ctx.edge_process, ctx.form.fault_s
    return await kill_for(
        ctx, [edge], down_s, f"SIGKILL {edge}, restarted after {down_s:g} s"
    )


async def pause_for(ctx: FaultContext, name: str, pause_s: float) -> FaultWindow:
    """Freeze process `name` with SIGSTOP for `pause_s`, then resume it."""
    targets = ctx.chaos.select([name])
    started = time.monotonic()
    ctx.chaos.pause(targets)
    try:
        await asyncio.sleep(pause_s)
    finally:
        ctx.chaos.resume(targets)
    return FaultWindow(f"SIGSTOP {name} for {pause_s:g} s", started, time.monotonic())


async def edge_freezes(ctx: FaultContext) -> FaultWindow:
    return await pause_for(ctx, ctx.edge_process, max(ctx.form.fault_s, FREEZE_MIN_S))


async def region_dies(ctx: FaultContext) -> FaultWindow:
    names = [t.name for t in ctx.chaos.select(region=ctx.region)]
    down_s = ctx.form.fault_s
    description = f"SIGKILL {' and '.join(names)}, restarted after {down_s:g} s"
    return await kill_for(ctx, names, down_s, description)


async def region_cut(ctx: FaultContext) -> FaultWindow:
    started = time.monotonic()
    await ctx.chaos.cut(ctx.region, "blackhole")
    try:
        await asyncio.sleep(ctx.form.fault_s)
    finally:
        await ctx.chaos.heal(ctx.region)
    description = f"link {ctx.region}-hub blackholed for {ctx.form.fault_s:g} s"
    return FaultWindow(description, started, time.monotonic())


async def hub_node_dies(ctx: FaultContext) -> FaultWindow:
    leader = await ingest_stream_leader(ctx.mesh)
    down_s = ctx.form.fault_s
    description = f"SIGKILL {leader} (INGEST leader), restarted after {down_s:g} s"
    return await kill_for(ctx, [leader], down_s, description)


async def ingest_stream_leader(mesh: Mesh) -> str:
    """Return the name of the hub node that leads the hub's INGEST stream."""
    nc = await connect_nats(
        hub_client_urls(mesh.topology), "chaos-probe", mesh.ops_auth()
    )
    try:
        js = nc.jetstream(domain=subjects.HUB_DOMAIN)
        info = await js.stream_info(subjects.HUB_INGEST_STREAM)
    finally:
        await close_nats(nc, "chaos-probe")
    if info.cluster is None or info.cluster.leader is None:
        raise ChaosError("the INGEST stream has no leader; is the hub clustered?")
    leader: str = info.cluster.leader
    return leader


async def core_dies(ctx: FaultContext) -> FaultWindow:
    down_s = ctx.form.crash_down_s
    description = f"SIGKILL core-0 under load, restarted after {down_s:g} s"
    return await kill_for(ctx, ["core-0"], down_s, description)


async def store_outage(ctx: FaultContext) -> FaultWindow:
    """Hold the SQLite write lock, or pause the core's store node, for the fault."""
    if ctx.mesh.topology.store.backend == "sqlite":
        return await hold_store_lock(ctx)
    node = ctx.chaos.store_node()
    return await pause_for(ctx, node.name, ctx.form.fault_s)


async def hold_store_lock(ctx: FaultContext) -> FaultWindow:
    lock = ctx.chaos.store_lock()
    started = time.monotonic()
    await asyncio.to_thread(lock.acquire)
    try:
        await asyncio.sleep(ctx.form.fault_s)
    finally:
        lock.release()
    description = f"SQLite write lock held for {ctx.form.fault_s:g} s"
    return FaultWindow(description, started, time.monotonic())


async def store_node_dies(ctx: FaultContext) -> FaultWindow:
    """Kill the core's store node; it restarts on its data after the fault."""
    node, down_s = ctx.chaos.store_node(), ctx.form.fault_s
    description = f"SIGKILL {node.name}, restarted after {down_s:g} s"
    return await kill_for(ctx, [node.name], down_s, description)


async def edge_and_core_die(ctx: FaultContext) -> FaultWindow:
    edge, form = ctx.edge_process, ctx.form
    started = time.monotonic()
    ctx.chaos.kill(ctx.chaos.select(["core-0"]), down_for_s=form.crash_down_s)
    ctx.chaos.kill(ctx.chaos.select([edge]), down_for_s=form.fault_s)
    await asyncio.sleep(form.fault_s)
    description = (
        f"SIGKILL {edge} and core-0 at once, restarted after {form.fault_s:g} s "
        f"and {form.crash_down_s:g} s"
    )
    return FaultWindow(description, started, time.monotonic())


SCENARIOS = [
    Scenario("edge-dies", "an edge process dies with clients connected", edge_dies),
    Scenario(
        "edge-freezes",
        "an edge process freezes (SIGSTOP) with clients connected",
        edge_freezes,
    ),
    Scenario(
        "region-dies", "a whole region dies: its leaf node and edges", region_dies
    ),
    Scenario(
        "region-cut",
        "a region is cut off from the hub while its users keep chatting",
        region_cut,
        needs_link_proxy=True,
    ),
    Scenario(
        "hub-node-dies",
        "the hub node leading the INGEST stream dies",
        hub_node_dies,
        needs_clustered_hub=True,
    ),
    Scenario("core-dies", "the core worker dies mid-batch (kill -9)", core_dies),
    Scenario(
        "store-outage",
        "the store cannot commit: the SQLite write lock is held, or the core's "
        "Cassandra node is frozen (SIGSTOP)",
        store_outage,
        needs_store_fault=True,
    ),
    Scenario(
        "store-node-dies",
        "the core's Cassandra node dies (kill -9) and restarts on its data",
        store_node_dies,
        needs_store_node=True,
    ),
    Scenario(
        "edge-and-core-die",
        "two faults at once: an edge and the core worker die",
        edge_and_core_die,
    ),
]
SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
