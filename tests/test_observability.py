"""Metrics endpoints of a real mesh, `chatmesh status` and `chatmesh bench-presence`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx

from chatmesh.scrape import Scrape, parse_samples
from core import metrics as m
from tests.conftest import Clients

CHATMESH = [sys.executable, "-m", "chatmesh", "--log-level", "WARNING"]


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(url, parse_samples(response.text))


def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CHATMESH, *args], capture_output=True, timeout=120)


async def test_every_process_serves_metrics(clients: Clients) -> None:
    urls = clients.mesh.metrics_urls()

    scrapes = {name: await scrape(url) for name, url in urls.items()}

    assert set(urls) == {"core-0", "edge-eu-west-1", "edge-us-east-1"}
    for name, result in scrapes.items():
        assert result.total("process_resident_memory_bytes") > 0, name
    assert (m.CORE_PENDING, ()) in scrapes["core-0"].samples
    assert (m.EDGE_CONNECTIONS, ()) in scrapes["edge-eu-west-1"].samples


async def test_message_moves_every_counter(clients: Clients) -> None:
    urls = clients.mesh.metrics_urls()
    before = {name: await scrape(url) for name, url in urls.items()}
    alice = await clients.connect("alice", "eu-west")
    bob = await clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()

    await alice.send("bob", "counted")
    await bob.wait_for(lambda e: getattr(e, "message", None) is not None)
    await asyncio.sleep(0.2)
    after = {name: await scrape(url) for name, url in urls.items()}

    def grew(name: str, metric: str) -> float:
        return after[name].total(metric) - before[name].total(metric)

    assert grew("edge-eu-west-1", m.EDGE_ACCEPTED) == 1
    assert grew("edge-eu-west-1", f"{m.EDGE_ACCEPT_SECONDS}_count") == 1
    assert grew("core-0", m.CORE_COMMITTED) == 1
    assert grew("core-0", f"{m.CORE_EDGE_TO_CORE_SECONDS}_count") == 1
    assert grew("core-0", m.CORE_DELIVERIES) >= 2
    assert grew("edge-us-east-1", m.EDGE_DELIVERED) >= 1
    assert grew("edge-us-east-1", f"{m.EDGE_END_TO_END_SECONDS}_count") >= 1
    assert after["edge-eu-west-1"].total(m.EDGE_CONNECTIONS) >= 1


async def test_rejected_frame_counted_by_code(clients: Clients) -> None:
    url = clients.mesh.metrics_urls()["edge-eu-west-1"]
    before = await scrape(url)
    alice = await clients.connect("alice", "eu-west")

    await alice.send_raw('{"type": "send", "id": "x", "to": "alice", "content": "me"}')
    await alice.wait_for(lambda e: getattr(e, "code", None) == "invalid_recipient")
    after = await scrape(url)

    counted = after.by_label(m.ERRORS, "kind").get("invalid_recipient", 0.0)
    assert (
        counted - before.by_label(m.ERRORS, "kind").get("invalid_recipient", 0.0) == 1
    )


async def test_core_reports_sync_lag_per_region(clients: Clients) -> None:
    url = clients.mesh.metrics_urls()["core-0"]
    async with asyncio.timeout(10):
        while True:
            lag = (await scrape(url)).by_label(m.CORE_SYNC_LAG, "region")
            if set(lag) == {"eu-west", "us-east"}:
                break
            await asyncio.sleep(0.5)
    assert all(value >= 0 for value in lag.values())


async def test_mesh_json_lists_metrics_and_pids(clients: Clients) -> None:
    recorded = json.loads(clients.mesh.layout.endpoints.read_text())

    assert recorded["metrics"] == clients.mesh.metrics_urls()
    assert set(recorded["pids"]) == set(clients.mesh.processes)
    assert all(isinstance(pid, int) for pid in recorded["pids"].values())


async def test_status_shows_edges_and_lag(clients: Clients) -> None:
    await clients.connect("carol", "us-east")
    run_dir = str(clients.mesh.layout.root)

    result = await asyncio.to_thread(
        run_cli, "status", "--run-dir", run_dir, "--interval", "0.5", "--json"
    )
    text = await asyncio.to_thread(run_cli, "status", "--run-dir", run_dir)

    assert result.returncode == 0, result.stderr.decode()
    status: dict[str, Any] = json.loads(result.stdout)
    edges = {e["edge"]: e for r in status["regions"] for e in r["edges"]}
    assert set(edges) == {"eu-west-1", "us-east-1"}
    assert all(e["up"] for e in edges.values())
    assert edges["us-east-1"]["connections"] >= 1
    assert set(status["cores"][0]["sync_lag"]) == {"eu-west", "us-east"}
    assert text.returncode == 0, text.stderr.decode()
    assert b"us-east-1" in text.stdout
    assert b"sync lag" in text.stdout


def test_status_without_mesh_explains(tmp_path: Any) -> None:
    result = run_cli("status", "--run-dir", str(tmp_path))
    assert result.returncode != 0
    assert b"no running mesh found" in result.stderr


async def test_bench_presence_one_report_per_edge(
    clients: Clients, tmp_path: Any
) -> None:
    out = tmp_path / "presence.json"
    result = await asyncio.to_thread(
        run_cli,
        "bench-presence",
        "--run-dir",
        str(clients.mesh.layout.root),
        "--clients",
        "6",
        "--ping-interval",
        "0.1",
        "--duration",
        "2",
        "--json",
        str(out),
    )

    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(out.read_text())
    assert report["heartbeats_counted_by_edges"] >= 6 * 10
    assert report["hub_presence_messages"] >= 2
    assert report["hub_presence_messages"] < report["heartbeats_counted_by_edges"]
    # The test topology reports every 0.2 s; allow one report of jitter.
    for edge, rate in report["reports_per_edge_per_interval"].items():
        assert rate <= 1.2, edge


async def test_status_exits_nonzero_when_edge_down(clients: Clients) -> None:
    edge = clients.mesh.processes["edge-us-east-1"]
    run_dir = str(clients.mesh.layout.root)
    edge.stop()
    try:
        result = await asyncio.to_thread(
            run_cli, "status", "--run-dir", run_dir, "--interval", "0.2"
        )
    finally:
        edge.start()
        await edge.wait_healthy(30)

    assert result.returncode == 1
    assert b"us-east-1" in result.stdout
    assert b"DOWN" in result.stdout
