"""`chatmesh bench-presence`: hub presence messages per client heartbeat.

Connects clients, has each ping every `ping_interval_s`, and counts what
reaches the hub on the presence subject by listening there. Edges reply to
pings themselves and send one report per report interval. So the ratio of
hub messages to heartbeats should fall as clients are added.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats

from chatmesh.benchmarks.load import LoadRecorder, make_plan, run_pings
from chatmesh.benchmarks.procstat import CpuWindow
from chatmesh.benchmarks.targets import (
    MeshUnderTest,
    Target,
    attach_mesh,
    mesh_target,
    start_mesh,
)
from chatmesh.scrape import scrape_all
from core import metrics as m
from core import subjects
from topology.model import Topology


@dataclass(frozen=True)
class PresenceOptions:
    clients: int
    ping_interval_s: float
    duration_s: float
    topology: Topology
    run_dir: Path | None


async def run_presence_bench(options: PresenceOptions) -> dict[str, Any]:
    """Return the presence report as JSON-ready data."""
    users = [f"p{uuid.uuid4().hex[:6]}-{i}" for i in range(options.clients)]
    plan = make_plan(users, 0, "")
    with tempfile.TemporaryDirectory(prefix="chatmesh-presence-") as tmp:
        if options.run_dir is not None:
            mut = attach_mesh(options.run_dir)
        else:
            mut = await start_mesh(options.topology, Path(tmp) / "mesh", 0.0)
        try:
            target = await mesh_target(mut, plan, LoadRecorder(), 1)
            try:
                return await _measure(options, mut, target)
            finally:
                await target.cleanup()
        finally:
            await mut.stop()


async def _measure(
    options: PresenceOptions, mut: MeshUnderTest, target: Target
) -> dict[str, Any]:
    arrivals: list[tuple[float, str]] = []

    async def on_report(msg: Any) -> None:
        arrivals.append((time.monotonic(), json.loads(msg.data).get("edge", "?")))

    nc = await nats.connect(servers=mut.endpoints["hub"], name="bench-presence")
    try:
        await nc.subscribe(subjects.PRESENCE_REPORTS, cb=on_report)
        await nc.flush()
        load_before = os.getloadavg()[0]
        before = await scrape_all(target.metrics_urls)
        cpu = CpuWindow(
            {**target.pids, "load-generator": os.getpid()}, time.monotonic()
        )
        started = time.monotonic()
        pings = await run_pings(
            target.clients, options.ping_interval_s, options.duration_s, seed=1
        )
        elapsed = time.monotonic() - started
        usage = cpu.close(time.monotonic())
        after = await scrape_all(target.metrics_urls)
    finally:
        await nc.close()
    heartbeats = sum(
        after[n].total(m.EDGE_HEARTBEATS) - before[n].total(m.EDGE_HEARTBEATS)
        for n in after
        if n in before
    )
    # Only reports that arrived while the clients pinged count.
    reports = Counter(
        edge for at, edge in arrivals if started <= at <= started + elapsed
    )
    interval_s = mut.topology.presence.report_interval_s
    intervals = elapsed / interval_s
    hub_messages = sum(reports.values())
    return {
        "command": " ".join(["chatmesh", *sys.argv[1:]]),
        "clients": options.clients,
        "ping_interval_s": options.ping_interval_s,
        "duration_s": round(elapsed, 2),
        "report_interval_s": interval_s,
        "pings_sent": pings,
        "heartbeats_counted_by_edges": int(heartbeats),
        "hub_presence_messages": hub_messages,
        "hub_messages_per_heartbeat": (
            round(hub_messages / heartbeats, 5) if heartbeats else None
        ),
        "reports_per_edge_per_interval": {
            edge: round(count / intervals, 3) for edge, count in sorted(reports.items())
        },
        "processes": [asdict(p) for p in usage],
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def format_presence(report: dict[str, Any]) -> str:
    lines = [
        f"clients {report['clients']}, one ping every {report['ping_interval_s']} s, "
        f"for {report['duration_s']} s (load average {report['load_average_after']})",
        f"heartbeats counted by edges: {report['heartbeats_counted_by_edges']}",
        f"presence messages at the hub: {report['hub_presence_messages']}",
        f"hub messages per heartbeat: {report['hub_messages_per_heartbeat']}",
        "reports per edge per interval: "
        + ", ".join(
            f"{e} {n}" for e, n in report["reports_per_edge_per_interval"].items()
        ),
    ]
    return "\n".join(lines)
