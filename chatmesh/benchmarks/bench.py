"""`chatmesh bench`: measure a mesh and its baselines in one run, in one harness.

The targets are chatmesh, the bare Starlette relay and bare NATS. For each,
the run connects the same users and sends the same workload. It records
throughput, latency percentiles from each send to every receipt, and the
CPU and memory of every process involved, the load generator included.
The report's ratios divide the mesh's figures by each baseline's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from chatmesh.benchmarks.load import (
    LoadRecorder,
    Plan,
    Workload,
    make_plan,
    percentiles,
    run_load,
)
from chatmesh.benchmarks.mesh_metrics import summarize_mesh
from chatmesh.benchmarks.procstat import CpuWindow, ProcessUsage
from chatmesh.benchmarks.targets import (
    MeshUnderTest,
    Target,
    attach_mesh,
    mesh_target,
    nats_target,
    relay_target,
    start_mesh,
)
from chatmesh.scrape import Scrape, scrape_all
from topology.model import Topology

log = structlog.get_logger(__name__)

SETTLE_S = 1.0


@dataclass(frozen=True)
class BenchOptions:
    """Everything `chatmesh bench` was asked to do."""

    clients: int
    targets: tuple[str, ...]
    workload: Workload
    group_size: int
    topology: Topology
    run_dir: Path | None
    rtt_ms: float


async def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every target in turn and return the report as JSON-ready data."""
    run_id = uuid.uuid4().hex[:6]
    users = [f"b{run_id}-{i}" for i in range(options.clients)]
    plan = make_plan(users, options.group_size, f"g{run_id}-")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="chatmesh-bench-") as tmp:
        work_dir = Path(tmp)
        mut = await _open_mesh(options, work_dir)
        try:
            runs = [
                await _run_target(name, mut, plan, options, work_dir)
                for name in options.targets
            ]
        finally:
            await mut.stop()
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": " ".join(["chatmesh", *sys.argv[1:]]),
        "machine": _machine(),
        "mesh": {
            "topology": mut.topology.name,
            "regions": [r.name for r in mut.topology.regions],
            "edges": sum(len(r.edges) for r in mut.topology.regions),
            "started_by_bench": mut.mesh is not None,
            "rtt_ms": options.rtt_ms,
        },
        "clients": options.clients,
        "group_size": options.group_size,
        "groups": len(plan.group_members),
        "workload": asdict(options.workload),
        "runs": runs,
        "ratios": _ratios(runs),
    }


async def _open_mesh(options: BenchOptions, work_dir: Path) -> MeshUnderTest:
    if options.run_dir is not None:
        return attach_mesh(options.run_dir)
    print("starting a mesh for the benchmark", file=sys.stderr, flush=True)
    return await start_mesh(options.topology, work_dir / "mesh", options.rtt_ms)


async def _run_target(
    name: str,
    mut: MeshUnderTest,
    plan: Plan,
    options: BenchOptions,
    work_dir: Path,
) -> dict[str, Any]:
    recorder = LoadRecorder()
    window = options.workload.window
    print(f"{name}: connecting {len(plan.users)} clients", file=sys.stderr, flush=True)
    if name == "mesh":
        target = await mesh_target(mut, plan, recorder, window)
    elif name == "relay":
        target = await relay_target(work_dir, plan, recorder, window)
    else:
        target = await nats_target(mut, plan, recorder, window)
    try:
        await asyncio.sleep(SETTLE_S)
        return await _measure(target, plan, options.workload, recorder)
    finally:
        await target.cleanup()


async def _measure(
    target: Target, plan: Plan, workload: Workload, recorder: LoadRecorder
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    pids = {**target.pids, "load-generator": os.getpid()}
    window: dict[str, Any] = {}
    sampler = asyncio.create_task(_sample_window(workload, pids, target, window))
    try:
        duration_s = await run_load(
            target.clients, plan, workload, recorder, target.name
        )
        await sampler
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return _result(target, recorder, duration_s, load_before, window)


async def _sample_window(
    workload: Workload, pids: dict[str, int], target: Target, out: dict[str, Any]
) -> None:
    """Sample CPU and metrics at the start and end of the measured window."""
    await asyncio.sleep(workload.warmup_s)
    cpu = CpuWindow(pids, time.monotonic())
    before = await scrape_all(target.metrics_urls)
    await asyncio.sleep(workload.duration_s)
    out["processes"] = cpu.close(time.monotonic())
    out["machine_cpu_percent"] = cpu.machine_percent
    out["before"] = before
    out["after"] = await scrape_all(target.metrics_urls)


def _result(
    target: Target,
    recorder: LoadRecorder,
    duration_s: float,
    load_before: float,
    window: dict[str, Any],
) -> dict[str, Any]:
    t = recorder.tally
    processes: list[ProcessUsage] = window.get("processes", [])
    result: dict[str, Any] = {
        "target": target.name,
        "duration_s": duration_s,
        "sent": t.measured_sent,
        "sent_per_s": round(t.measured_sent / duration_s, 1),
        "completed": t.completed,
        # Throughput: messages whose last receipt arrived inside the window,
        # whenever they were sent. Sends beyond it pile up and show as latency.
        "messages_per_s": round(t.window_completed / duration_s, 1),
        "receipts": t.receipts,
        "receipts_per_s": round(t.window_receipts / duration_s, 1),
        "expected_receipts": t.expected_receipts,
        "missing_receipts": t.expected_receipts - t.receipts,
        "missed_slots": t.missed_slots,
        "errors": dict(t.errors),
        "latency_ms": percentiles(t.receipt_ms),
        "accept_ms": percentiles(t.accept_ms),
        "commit_ms": percentiles(t.commit_ms),
        "processes": [asdict(p) for p in processes],
        "cpu_percent_total": round(sum(p.cpu_percent for p in processes), 1),
        # Busy CPU of the whole machine, 100 per core: the rest of it belongs
        # to processes outside the benchmark, which distort its figures.
        "machine_cpu_percent": window.get("machine_cpu_percent"),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    result["cpu_us_per_message"] = _cpu_per_message(
        processes, t.window_completed, duration_s
    )
    before: dict[str, Scrape] = window.get("before", {})
    after: dict[str, Scrape] = window.get("after", {})
    if before and after:
        result["mesh_metrics"] = summarize_mesh(before, after, t.measured_sent)
    return result


def _cpu_per_message(
    processes: list[ProcessUsage], completed: int, duration_s: float
) -> dict[str, float | None]:
    """Return CPU microseconds per completed message, without and with the load."""
    if not completed:
        return {"target": None, "with_load_generator": None}
    cpu_s = [p.cpu_percent / 100 * duration_s for p in processes]
    target_s = sum(
        c for p, c in zip(processes, cpu_s, strict=True) if p.name != "load-generator"
    )
    return {
        "target": round(target_s / completed * 1e6, 1),
        "with_load_generator": round(sum(cpu_s) / completed * 1e6, 1),
    }


def _ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_target = {run["target"]: run for run in runs}
    mesh = by_target.get("mesh")
    ratios: dict[str, Any] = {}
    if mesh is None:
        return ratios
    for baseline in ("relay", "nats"):
        base = by_target.get(baseline)
        if base is None:
            continue
        ratios[f"mesh_vs_{baseline}"] = {
            "messages_per_s": _ratio(mesh["messages_per_s"], base["messages_per_s"]),
            "p50_ms": _ratio(mesh["latency_ms"]["p50"], base["latency_ms"]["p50"]),
            "p99_ms": _ratio(mesh["latency_ms"]["p99"], base["latency_ms"]["p99"]),
            "cpu_us_per_message": _ratio(
                mesh["cpu_us_per_message"]["target"],
                base["cpu_us_per_message"]["target"],
            ),
        }
    return ratios


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def format_report(report: dict[str, Any]) -> str:
    """Return a plain-text table of the report's main figures."""
    header = (
        f"{'target':<7} {'sent/s':>9} {'msgs/s':>9} {'rcpt/s':>9} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'missing':>8} {'cpu %':>7} "
        f"{'all %':>6} {'load':>5}"
    )
    lines = [header]
    for run in report["runs"]:
        lat = run["latency_ms"]
        lines.append(
            f"{run['target']:<7} {run['sent_per_s']:>9,.0f} "
            f"{run['messages_per_s']:>9,.0f} {run['receipts_per_s']:>9,.0f} "
            f"{_ms(lat['p50']):>8} {_ms(lat['p90']):>8} {_ms(lat['p99']):>8} "
            f"{_ms(lat['p999']):>9} {run['missing_receipts']:>8} "
            f"{run['cpu_percent_total']:>7.0f} {run['machine_cpu_percent'] or 0:>6.0f} "
            f"{run['load_average_after']:>5.2f}"
        )
    for run in report["runs"]:
        lines.append(f"\n{run['target']} processes (CPU % of one core, RSS MiB):")
        for p in run["processes"]:
            lines.append(
                f"  {p['name']:<18} {p['cpu_percent']:>6.1f}%  {p['rss_mib']:>7.1f} MiB"
            )
        cost = run["cpu_us_per_message"]
        lines.append(
            f"  CPU per message: {cost['target']} us in the target, "
            f"{cost['with_load_generator']} us with the load generator"
        )
        if run["errors"]:
            lines.append(f"  errors: {run['errors']}")
    for name, ratio in report["ratios"].items():
        lines.append(f"\n{name}: {ratio}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
