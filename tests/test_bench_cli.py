"""`chatmesh bench` end to end on a tiny load, and `chatmesh capacity` arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatmesh.capacity import Assumptions, Measured, capacity_model, wire_overhead

CHATMESH = [sys.executable, "-m", "chatmesh", "--log-level", "WARNING"]
LATENCY_KEYS = {"p50", "p90", "p99", "p999", "max", "mean"}


def test_tiny_bench_writes_wellformed_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            *CHATMESH,
            "bench",
            "--clients",
            "6",
            "--group-size",
            "3",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--rate",
            "60",
            "--drain",
            "5",
            "--json",
            str(out),
        ],
        capture_output=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stderr.decode()[-3000:]
    report = json.loads(out.read_text())
    assert report["clients"] == 6
    assert report["groups"] == 2
    assert report["machine"]["cpus"] >= 1
    runs = {run["target"]: run for run in report["runs"]}
    assert set(runs) == {"mesh", "relay", "nats"}
    for name, run in runs.items():
        assert run["sent"] > 0, name
        assert run["messages_per_s"] > 0, name
        assert set(run["latency_ms"]) == LATENCY_KEYS, name
        assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"], name
        assert run["missing_receipts"] == 0, name
        assert run["errors"] == {}, name
        assert "load-generator" in {p["name"] for p in run["processes"]}, name
    mesh = runs["mesh"]
    assert {p["name"] for p in mesh["processes"]} >= {"core-0", "edge-eu-west-1"}
    assert mesh["commit_ms"]["p50"] is not None
    # The metrics cover the window only; commits of its last sends may follow.
    assert mesh["mesh_metrics"]["counters"]["committed"] > 0
    assert mesh["mesh_metrics"]["hub_deliveries_per_message"] >= 1
    assert set(report["ratios"]) == {"mesh_vs_relay", "mesh_vs_nats"}
    assert b"mesh" in result.stdout


def test_bench_rejects_unknown_target() -> None:
    result = subprocess.run(
        [*CHATMESH, "bench", "--targets", "mesh,carrier-pigeon"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert b"carrier-pigeon" in result.stderr


MEASURED = Measured(
    source="test",
    edge_cpu_s_per_message=100e-6,
    core_cpu_s_per_message=50e-6,
    nats_cpu_s_per_message=20e-6,
    sequencer_messages_per_s=1000.0,
    hub_deliveries_per_message=1.5,
    receipts_per_message=1.2,
    edge_batch_mean=10.0,
)


def rows_by_name(assumptions: Assumptions) -> dict[str, float]:
    return {row.name: row.value for row in capacity_model(assumptions, MEASURED)}


def test_capacity_target_load() -> None:
    rows = rows_by_name(Assumptions())

    assert rows["online users"] == pytest.approx(50e6)
    assert rows["messages"] == pytest.approx(10e6)
    assert rows["message payload"] == pytest.approx(5e9)
    assert rows["online users per region"] == pytest.approx(10e6)
    assert rows["edge servers per region, by connections"] == 5
    # 2M msg/s per region x 100 us = 200 cores = 7 servers of 32 cores.
    assert rows["edge CPU per region"] == pytest.approx(200.0)
    assert rows["edge servers per region, by CPU"] == 7
    assert rows["edge servers per region"] == 7
    assert rows["edge processes per region"] == 200
    assert rows["sequencer shards (hub INGEST streams and consumers)"] == 10_000
    assert rows["core CPU"] == pytest.approx(500.0)
    assert rows["store replica writes"] == pytest.approx(30e6)
    assert rows["store nodes"] == 600


def test_capacity_bandwidth_and_presence() -> None:
    assumptions = Assumptions(
        regions=2, heartbeat_interval_s=10.0, session_minutes=20.0
    )
    rows = rows_by_name(assumptions)
    envelope, delivery = wire_overhead(assumptions.message_bytes)

    per_region_rate = 10e6 / 2
    assert rows["region to hub, per region"] == pytest.approx(
        per_region_rate * envelope
    )
    assert rows["hub to region, per region"] == pytest.approx(
        per_region_rate * 1.5 * delivery
    )
    assert rows["client heartbeats (stop at the edge)"] == pytest.approx(5e6)
    # 25M online per region / 50k connections per process = 500 edge processes.
    assert rows["presence reports to the hub"] == pytest.approx(2 * 500)
    assert rows["hub messages per heartbeat"] == pytest.approx(1000 / 5e6)
    assert rows["presence changes"] == pytest.approx(2 * 50e6 / 1200)


def test_wire_overhead_grows_with_content() -> None:
    small = wire_overhead(100)
    large = wire_overhead(600)
    assert large[0] - small[0] == 500
    assert large[1] - small[1] == 500
    assert math.isclose(small[0], small[0])


def test_capacity_command_reads_report(tmp_path: Path) -> None:
    report: dict[str, Any] = {
        "command": "chatmesh bench",
        "clients": 10,
        "runs": [
            {
                "target": "mesh",
                "duration_s": 10.0,
                "messages_per_s": 10_000.0,
                "receipts": 120_000,
                "completed": 100_000,
                "processes": [
                    {"name": "edge-a", "cpu_percent": 50.0},
                    {"name": "edge-b", "cpu_percent": 50.0},
                    {"name": "core-0", "cpu_percent": 50.0},
                    {"name": "hub-1", "cpu_percent": 10.0},
                    {"name": "leaf-a", "cpu_percent": 10.0},
                    {"name": "load-generator", "cpu_percent": 90.0},
                ],
                "mesh_metrics": {"hub_deliveries_per_message": 1.5},
            }
        ],
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))

    result = subprocess.run(
        [*CHATMESH, "capacity", "--report", str(path), "--regions", "5", "--json"],
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr.decode()
    body = json.loads(result.stdout)
    measured = body["measured"]
    # 100% of a core over 10 s for 100,000 messages: 100 us per message.
    assert measured["edge_cpu_s_per_message"] == pytest.approx(100e-6)
    assert measured["core_cpu_s_per_message"] == pytest.approx(50e-6)
    assert measured["nats_cpu_s_per_message"] == pytest.approx(20e-6)
    assert measured["receipts_per_message"] == pytest.approx(1.2)
    rows = {row["name"]: row for row in body["rows"]}
    assert rows["edge CPU per region"]["value"] == pytest.approx(200.0)
    assert "measured" in rows["edge CPU per region"]["source"]
    assert "assumed" in rows["store nodes"]["source"]


def test_capacity_rejects_report_without_mesh_run(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"runs": [{"target": "relay"}]}))
    result = subprocess.run(
        [*CHATMESH, "capacity", "--report", str(path)], capture_output=True, timeout=60
    )
    assert result.returncode != 0
    assert b"no mesh run" in result.stderr
