"""`chatmesh status`: a running mesh at a glance, from its metrics endpoints.

Scrapes every endpoint listed in the run directory's `mesh.json` twice,
`interval_s` apart, and reports per edge its connections and message and
error rates, and for the core its commit rate, pending messages and the
sync lag of every region.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chatmesh.paths import read_endpoints
from chatmesh.scrape import Scrape, bucket_delta, quantile, scrape_all
from core import metrics as m


async def collect_status(run_dir: Path, interval_s: float) -> dict[str, Any]:
    """Return the status of the mesh in `run_dir` as JSON-ready data."""
    endpoints = read_endpoints(run_dir)
    urls: dict[str, str] = endpoints.get("metrics", {})
    if not urls:
        raise FileNotFoundError(
            f"{run_dir}/mesh.json lists no metrics endpoints; restart the mesh with "
            "this version of `chatmesh up`"
        )
    before = await scrape_all(urls)
    await asyncio.sleep(interval_s)
    after = await scrape_all(urls)
    regions = []
    for region, info in endpoints["regions"].items():
        edges = [
            _edge_status(
                name, before[f"edge-{name}"], after[f"edge-{name}"], interval_s
            )
            for name in info["edges"]
            if f"edge-{name}" in after
        ]
        regions.append({"region": region, "edges": edges})
    cores = [
        _core_status(name, before[name], after[name], interval_s)
        for name in after
        if name.startswith("core-")
    ]
    return {
        "run_dir": str(run_dir),
        "interval_s": interval_s,
        "regions": regions,
        "cores": cores,
    }


def all_up(status: dict[str, Any]) -> bool:
    """Return whether every edge and core worker of a status report is up."""
    processes = [e for r in status["regions"] for e in r["edges"]] + status["cores"]
    return all(process["up"] for process in processes)


def _rate(before: Scrape, after: Scrape, name: str, interval_s: float) -> float:
    return round((after.total(name) - before.total(name)) / interval_s, 1)


def _p99_ms(before: Scrape, after: Scrape, histogram: str) -> float | None:
    value = quantile(bucket_delta(before, after, histogram), 0.99)
    return None if value is None else round(value * 1000, 2)


def _errors(before: Scrape, after: Scrape, interval_s: float) -> dict[str, Any]:
    totals = after.by_label(m.ERRORS, "kind")
    earlier = before.by_label(m.ERRORS, "kind")
    return {
        "per_s": _rate(before, after, m.ERRORS, interval_s),
        "total_by_kind": {kind: int(count) for kind, count in totals.items() if count},
        "new_by_kind": {
            kind: int(count - earlier.get(kind, 0.0))
            for kind, count in totals.items()
            if count - earlier.get(kind, 0.0)
        },
    }


def _edge_status(
    name: str, before: Scrape, after: Scrape, interval_s: float
) -> dict[str, Any]:
    if after.error is not None:
        return {"edge": name, "up": False, "error": after.error}
    return {
        "edge": name,
        "up": True,
        "connections": int(after.total(m.EDGE_CONNECTIONS)),
        "accepted_per_s": _rate(before, after, m.EDGE_ACCEPTED, interval_s),
        "delivered_per_s": _rate(before, after, m.EDGE_DELIVERED, interval_s),
        "heartbeats_per_s": _rate(before, after, m.EDGE_HEARTBEATS, interval_s),
        "accept_p99_ms": _p99_ms(before, after, m.EDGE_ACCEPT_SECONDS),
        "end_to_end_p99_ms": _p99_ms(before, after, m.EDGE_END_TO_END_SECONDS),
        "errors": _errors(before, after, interval_s),
        "cpu_seconds": after.total("process_cpu_seconds_total"),
        "rss_mib": round(after.total("process_resident_memory_bytes") / 2**20, 1),
    }


def _core_status(
    name: str, before: Scrape, after: Scrape, interval_s: float
) -> dict[str, Any]:
    if after.error is not None:
        return {"core": name, "up": False, "error": after.error}
    return {
        "core": name,
        "up": True,
        "committed_per_s": _rate(before, after, m.CORE_COMMITTED, interval_s),
        "received_per_s": _rate(before, after, m.CORE_RECEIVED, interval_s),
        "pending": int(after.total(m.CORE_PENDING)),
        "sync_lag": {
            region: int(lag)
            for region, lag in after.by_label(m.CORE_SYNC_LAG, "region").items()
        },
        "online_users": int(after.total(m.CORE_ONLINE_USERS)),
        "store_write_p99_ms": _p99_ms(before, after, m.CORE_STORE_WRITE_SECONDS),
        "errors": _errors(before, after, interval_s),
        "rss_mib": round(after.total("process_resident_memory_bytes") / 2**20, 1),
    }


def format_status(status: dict[str, Any]) -> str:
    """Return the status as a few aligned tables."""
    lines = [
        f"{'region':<10} {'edge':<14} {'conns':>7} {'accepted/s':>11} "
        f"{'delivered/s':>12} {'errors/s':>9} {'accept p99 ms':>14}"
    ]
    for region in status["regions"]:
        for edge in region["edges"]:
            if not edge["up"]:
                lines.append(
                    f"{region['region']:<10} {edge['edge']:<14} DOWN: {edge['error']}"
                )
                continue
            lines.append(
                f"{region['region']:<10} {edge['edge']:<14} {edge['connections']:>7} "
                f"{edge['accepted_per_s']:>11,.1f} {edge['delivered_per_s']:>12,.1f} "
                f"{edge['errors']['per_s']:>9,.1f} {_ms(edge['accept_p99_ms']):>14}"
            )
    for core in status["cores"]:
        lines.append("")
        if not core["up"]:
            lines.append(f"{core['core']}: DOWN: {core['error']}")
            continue
        lag = ", ".join(f"{r} {n}" for r, n in sorted(core["sync_lag"].items())) or "-"
        lines += [
            f"{core['core']}: committed {core['committed_per_s']:,.1f}/s, "
            f"pending {core['pending']}, online users {core['online_users']}, "
            f"errors {core['errors']['per_s']:,.1f}/s",
            f"sync lag (messages not yet at the hub): {lag}",
        ]
    errors = _all_errors(status)
    if errors:
        lines.append("")
        lines.append("errors since start: " + ", ".join(f"{k} {v}" for k, v in errors))
    return "\n".join(lines)


def _all_errors(status: dict[str, Any]) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    processes = [e for r in status["regions"] for e in r["edges"]] + status["cores"]
    for process in processes:
        if process["up"]:
            for kind, count in process["errors"]["total_by_kind"].items():
                totals[kind] = totals.get(kind, 0) + count
    return sorted(totals.items())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
