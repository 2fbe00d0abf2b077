"""Store faults on Cassandra: the store scenarios and the chaos commands.

The mesh is the three-hub topology with one local Cassandra node per
region. The launcher runs those nodes, records them as chaos targets of
kind `store`, and restarts a killed one on its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from chatmesh.chaos.runner import run_scenario, wait_mesh_healthy
from chatmesh.chaos.scenarios import SCENARIOS_BY_NAME, SHORT
from chatmesh.client import ChatClient, ChatError
from tests.conftest import Clients, start_mesh
from tests.cql_fixtures import TEST_HEAP_MB
from tests.test_chaos import CHATMESH, THREE_HUB, chaos_command, check_report
from topology.chaos import Chaos
from topology.launcher import STORE_READY_TIMEOUT_S, Mesh
from topology.model import Topology, default_topology_path, parse_topology
from topology.processes import process_start_ticks

THREE_HUB_PATH = default_topology_path().parent / "three-hub.yaml"
STORE_REGION = "eu-west"
OTHER_REGION = "us-east"
HISTORY_SIZE = 5


def scylla_three_hub(local_nodes: bool = True) -> Topology:
    """Return three-hub.yaml with a Cassandra store, by default on local nodes."""
    raw = yaml.safe_load(THREE_HUB_PATH.read_text())
    raw["name"] = "chaos-store"
    raw["store"] = {
        "backend": "scylla",
        "scylla": {
            "local_nodes": local_nodes,
            "port": 0,
            "storage_port": 0,
            "local_heap_mb": TEST_HEAP_MB,
        },
    }
    return parse_topology(raw)


@pytest.fixture(scope="module")
def store_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    run = start_mesh(scylla_three_hub(), tmp_path_factory.mktemp("chaos-store"))
    try:
        yield run
    finally:
        run.stop()


def process_state(pid: int) -> str:
    """Return the state letter of `pid` from /proc (T when stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def listed_targets(output: str) -> dict[str, str]:
    """Map each process name in `chaos list` output to the rest of its line."""
    rows = [line.split(maxsplit=1) for line in output.splitlines()]
    return {row[0]: row[1] for row in rows if len(row) == 2 and row[0] != "link"}


def test_store_scenarios_need_store_nodes() -> None:
    node_dies = SCENARIOS_BY_NAME["store-node-dies"]
    outage = SCENARIOS_BY_NAME["store-outage"]
    remote_cluster = scylla_three_hub(local_nodes=False)

    sqlite_reason = node_dies.unsupported_reason(THREE_HUB)
    assert sqlite_reason is not None
    assert "SQLite" in sqlite_reason
    assert outage.unsupported_reason(THREE_HUB) is None
    assert node_dies.unsupported_reason(scylla_three_hub()) is None
    assert outage.unsupported_reason(scylla_three_hub()) is None
    remote_reason = outage.unsupported_reason(remote_cluster)
    assert remote_reason is not None
    assert "local_nodes" in remote_reason
    assert node_dies.unsupported_reason(remote_cluster) == remote_reason


def test_chaos_run_rejects_store_node_on_sqlite(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CHATMESH, "chaos", "run", "store-node-dies", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "store-node-dies cannot run" in result.stderr
    assert "SQLite" in result.stderr
    assert not (tmp_path / "topology.json").exists()


@pytest.mark.chaos
@pytest.mark.cassandra
def test_chaos_list_shows_store_nodes(store_mesh: Mesh) -> None:
    listed = chaos_command(store_mesh, "list")

    assert listed.returncode == 0, listed.stderr
    targets = listed_targets(listed.stdout)
    for region in (STORE_REGION, OTHER_REGION):
        node = store_mesh.store_processes[f"cql-{region}"]
        assert targets[node.name] == f"store in {region}, pid {node.pid}"
    in_region = Chaos(store_mesh.layout.root).select(region=STORE_REGION)
    assert {t.name for t in in_region} == {"leaf-eu-west", "edge-eu-west-1"}
    assert Chaos(store_mesh.layout.root).store_node().name == "cql-eu-west"


@pytest.mark.chaos
@pytest.mark.cassandra
def test_store_node_pause_resume_from_cli(store_mesh: Mesh) -> None:
    node = store_mesh.store_processes[f"cql-{OTHER_REGION}"]
    pid = node.pid
    assert pid is not None

    paused = chaos_command(store_mesh, "pause", node.name)
    try:
        assert paused.returncode == 0, paused.stderr
        assert f"paused {node.name} (pid {pid})" in paused.stdout
        assert process_state(pid) == "T"
        assert not node.node.serves_cql(timeout_s=2.0)
    finally:
        # Resume even after a failed check: later tests need the node.
        resumed = chaos_command(store_mesh, "resume", node.name)
    assert resumed.returncode == 0, resumed.stderr
    assert process_state(pid) != "T"
    assert node.node.serves_cql()
    assert node.pid == pid

    locked = chaos_command(store_mesh, "lock-store", "--for", "0.2")
    assert locked.returncode != 0
    assert "pause a store node instead" in locked.stderr


@pytest.mark.chaos
@pytest.mark.cassandra
@pytest.mark.parametrize(
    ("scenario_name", "signal_name", "restarted"),
    [("store-outage", "SIGSTOP", False), ("store-node-dies", "SIGKILL", True)],
)
async def test_store_fault_keeps_every_message(
    store_mesh: Mesh, scenario_name: str, signal_name: str, restarted: bool
) -> None:
    scenario = SCENARIOS_BY_NAME[scenario_name]
    node = store_mesh.store_processes[f"cql-{STORE_REGION}"]
    pid_before = node.pid

    report = await run_scenario(store_mesh, scenario, SHORT)

    check_report(report, scenario)
    assert report.late == 0
    assert report.fault.startswith(f"{signal_name} {node.name}")
    # Commits stall while the store node is down, so some delivery waits
    # for most of the fault: proof that the fault hit the store.
    assert report.delivery_p99_s is not None
    assert report.delivery_p99_s >= 0.8 * SHORT.fault_s
    if restarted:
        assert node.pid != pid_before, "the supervisor did not restart the node"
        check_recorded(store_mesh, node.name)
    else:
        assert node.pid == pid_before, "a paused node must not be restarted"


@pytest.mark.chaos
@pytest.mark.cassandra
async def test_killed_store_node_keeps_fresh_writes(store_mesh: Mesh) -> None:
    """Messages committed just before `chaos kill` are read back after the restart.

    The restarted node must replay at least those writes from its commit log.
    """
    node = store_mesh.store_processes[f"cql-{STORE_REGION}"]
    killed_pid = node.pid
    supervisor = asyncio.create_task(store_mesh.supervise())
    clients = Clients(store_mesh)
    try:
        history = await send_history(clients)
        killed = await asyncio.to_thread(chaos_command, store_mesh, "kill", node.name)
        assert killed.returncode == 0, killed.stderr
        assert f"killed {node.name} (pid {killed_pid})" in killed.stdout

        await wait_mesh_healthy(store_mesh, STORE_READY_TIMEOUT_S)

        assert node.pid != killed_pid, "the supervisor did not restart the node"
        replayed = node.node.replayed_mutations()
        assert replayed is not None, "the restarted node replayed no commit log"
        assert replayed >= HISTORY_SIZE
        check_recorded(store_mesh, node.name)
        # The core reads only from its own datacenter, whose one replica is
        # the restarted node: a sync from no cursors reads back its data.
        reader = await clients.connect("bob", OTHER_REGION)
        await sync_until_served(reader, STORE_READY_TIMEOUT_S)
        assert [m.content for m in reader.shown] == history
        assert [m.seq for m in reader.shown] == list(range(1, HISTORY_SIZE + 1))
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await clients.close_all()


def check_recorded(mesh: Mesh, name: str) -> None:
    """Assert that processes.json records the pid and start time of a restarted node."""
    pid = mesh.store_processes[name].pid
    assert pid is not None
    recorded = {t.name: t for t in Chaos(mesh.layout.root).targets()}[name]
    assert recorded.kind == "store"
    assert recorded.pid == pid
    assert recorded.start_ticks is not None
    assert recorded.start_ticks == process_start_ticks(pid)


async def send_history(clients: Clients) -> list[str]:
    """Commit a few messages from alice to bob and return their texts."""
    alice = await clients.connect("alice", STORE_REGION)
    bob = await clients.connect("bob", OTHER_REGION)
    await alice.sync()
    await bob.sync()
    texts = [f"before-kill-{i}" for i in range(HISTORY_SIZE)]
    for text in texts:
        await alice.send("bob", text, client_msg_id=text)
    await bob.wait_for_messages(HISTORY_SIZE, timeout_s=30)
    return texts


async def sync_until_served(client: ChatClient, timeout_s: float) -> None:
    """Sync `client`, trying again while the core's store still fails requests."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.sync()
            return
        except (ChatError, TimeoutError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(1.0)
