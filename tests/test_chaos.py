"""The chaos suite's short form, on a three-node hub with link proxies.

Every scenario runs under a steady load of chatting clients in both regions
and must lose, duplicate and reorder nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmesh.chaos.report import ScenarioReport
from chatmesh.chaos.runner import run_scenario, wait_mesh_healthy
from chatmesh.chaos.scenarios import SHORT, Scenario, supported_scenarios
from tests.conftest import small_topology, start_mesh
from topology.chaos import Chaos
from topology.launcher import Mesh, RunLayout
from topology.model import default_topology_path, load_topology
from topology.processes import process_start_ticks

pytestmark = pytest.mark.chaos

CHATMESH = [sys.executable, "-m", "chatmesh", "--log-level", "WARNING"]
THREE_HUB = load_topology(default_topology_path().parent / "three-hub.yaml")
# Scenarios whose fault closes the sessions of the first region's clients.
MOVING = {"edge-dies", "edge-freezes", "region-dies", "edge-and-core-die"}


@pytest.fixture(scope="module")
def chaos_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    run = start_mesh(THREE_HUB, tmp_path_factory.mktemp("chaos"))
    try:
        yield run
    finally:
        run.stop()


# The SQLite store has no store node, so store-node-dies runs in
# tests/test_chaos_store.py on Cassandra.
@pytest.mark.parametrize(
    "scenario", supported_scenarios(THREE_HUB), ids=lambda s: s.name
)
async def test_scenario_keeps_every_message(
    chaos_mesh: Mesh, scenario: Scenario
) -> None:
    report = await run_scenario(chaos_mesh, scenario, SHORT)
    check_report(report, scenario)


def check_report(report: ScenarioReport, scenario: Scenario) -> None:
    """Assert that a scenario lost, duplicated and reordered nothing."""
    assert report.acknowledged > 0
    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0
    assert report.regressions == 0
    assert report.conflicts == 0
    assert report.sender_inversions == 0
    assert report.not_resumed == 0
    assert report.not_back_home == 0
    assert report.catch_up_s is not None, "recipients did not catch up"
    assert report.presence_convergence_s is not None, "presence did not converge"
    if scenario.name in MOVING:
        assert report.moved_region > 0
        assert report.resume_p99_s is not None


def chaos_command(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHATMESH, "chaos", *args, "--run-dir", str(mesh.layout.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def link_modes(mesh: Mesh) -> dict[str, tuple[str, float]]:
    links = asyncio.run(Chaos(mesh.layout.root).links())
    return {link["region"]: (link["mode"], link["latency_ms"]) for link in links}


def test_chaos_commands_on_running_mesh(chaos_mesh: Mesh) -> None:
    listed = chaos_command(chaos_mesh, "list")
    assert listed.returncode == 0, listed.stderr
    assert "edge-eu-west-1" in listed.stdout
    assert "link eu-west" in listed.stdout

    assert chaos_command(chaos_mesh, "cut", "eu-west").returncode == 0
    assert chaos_command(chaos_mesh, "latency", "us-east", "20").returncode == 0
    assert link_modes(chaos_mesh) == {
        "eu-west": ("blackhole", 0.0),
        "us-east": ("up", 20.0),
    }

    # `heal` without a region restores every link, latency included.
    assert chaos_command(chaos_mesh, "heal").returncode == 0
    assert link_modes(chaos_mesh) == {"eu-west": ("up", 0.0), "us-east": ("up", 0.0)}

    paused = chaos_command(chaos_mesh, "pause", "--region", "us-east", "--for", "0.5")
    assert paused.returncode == 0, paused.stderr
    assert "resumed leaf-us-east" in paused.stdout
    locked = chaos_command(chaos_mesh, "lock-store", "--for", "0.2")
    assert locked.returncode == 0, locked.stderr
    asyncio.run(wait_mesh_healthy(chaos_mesh, 30))

    unknown = chaos_command(chaos_mesh, "kill", "edge-mars-1")
    assert unknown.returncode != 0
    assert "unknown process edge-mars-1" in unknown.stderr


def test_chaos_list_marks_dead_processes(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    layout.topology.write_text(small_topology().model_dump_json())
    me = os.getpid()
    entries = {
        "edge-eu-west-1": {"pid": me, "start_ticks": process_start_ticks(me)},
        # The same pid with another start time: a process that exited and
        # whose pid the kernel gave to someone else.
        "edge-us-east-1": {"pid": me, "start_ticks": -1},
    }
    processes = {
        name: {"kind": "edge", "region": name[5:12], **entry}
        for name, entry in entries.items()
    }
    layout.processes.write_text(json.dumps({"processes": processes}))

    listed = subprocess.run(
        [*CHATMESH, "chaos", "list", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert lines["edge-eu-west-1"].endswith(f"pid {me}")
    assert lines["edge-us-east-1"].endswith("not running")
