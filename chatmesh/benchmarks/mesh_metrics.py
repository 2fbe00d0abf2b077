"""Summarize what a mesh's own metrics counted during a benchmark window."""

from __future__ import annotations

from typing import Any

from chatmesh.scrape import Scrape, bucket_delta, delta, quantile
from core import metrics as m

# Histograms of one hop each, in the order a message passes them.
HOPS = {
    "client_to_edge_ack": m.EDGE_ACCEPT_SECONDS,
    "edge_to_core": m.CORE_EDGE_TO_CORE_SECONDS,
    "store_write": m.CORE_STORE_WRITE_SECONDS,
    "route_to_hub_ack": m.CORE_ROUTE_SECONDS,
    "commit_to_fanout": m.EDGE_COMMIT_TO_FANOUT_SECONDS,
    "accept_to_fanout": m.EDGE_END_TO_END_SECONDS,
}
COUNTERS = {
    "accepted": m.EDGE_ACCEPTED,
    "committed": m.CORE_COMMITTED,
    "duplicates": m.CORE_DUPLICATES,
    "deliveries_published": m.CORE_DELIVERIES,
    "deliveries_received_by_edges": m.EDGE_DELIVERIES,
    "events_pushed": m.EDGE_DELIVERED,
    "presence_reports_sent": m.EDGE_PRESENCE_REPORTS,
    "presence_reports_received": m.CORE_PRESENCE_REPORTS,
    "heartbeats": m.EDGE_HEARTBEATS,
}


def summarize_mesh(
    before: dict[str, Scrape], after: dict[str, Scrape], sent: int
) -> dict[str, Any]:
    """Return counter deltas, per-hop latency quantiles and batch sizes.

    `sent` is the number of messages the load generator sent in the window,
    to express deliveries at the hub per message.
    """
    names = [n for n in after if n in before and not after[n].error]
    counters = {
        key: sum(_delta_total(before[n], after[n], metric) for n in names)
        for key, metric in COUNTERS.items()
    }
    hops = {key: _hop(before, after, names, metric) for key, metric in HOPS.items()}
    deliveries_by_region: dict[str, float] = {}
    errors: dict[str, float] = {}
    for name in names:
        changes = delta(before[name], after[name])
        for (sample, labels), value in changes.items():
            label = dict(labels)
            if sample == m.CORE_DELIVERIES and value:
                region = label["region"]
                deliveries_by_region[region] = (
                    deliveries_by_region.get(region, 0) + value
                )
            if sample == m.ERRORS and value:
                errors[label["kind"]] = errors.get(label["kind"], 0) + value
    committed = counters["committed"]
    published = counters["deliveries_published"]
    return {
        "counters": counters,
        "deliveries_by_region": deliveries_by_region,
        "hub_deliveries_per_message": (
            round(published / committed, 3) if committed else None
        ),
        "errors": errors,
        "hops_ms": hops,
        "edge_batch_mean": _mean(before, after, names, m.EDGE_BATCH_MESSAGES),
        "core_batch_mean": _mean(before, after, names, m.CORE_COMMIT_BATCH_MESSAGES),
        "sent_by_load_generator": sent,
        "sync_lag_end": {
            n: after[n].by_label(m.CORE_SYNC_LAG, "region")
            for n in names
            if n.startswith("core")
        },
    }


def _delta_total(before: Scrape, after: Scrape, metric: str) -> float:
    return after.total(metric) - before.total(metric)


def _hop(
    before: dict[str, Scrape], after: dict[str, Scrape], names: list[str], metric: str
) -> dict[str, float | None]:
    combined: dict[float, float] = {}
    for name in names:
        for bound, count in bucket_delta(before[name], after[name], metric):
            combined[bound] = combined.get(bound, 0.0) + count
    buckets = sorted(combined.items())
    count = buckets[-1][1] if buckets else 0.0
    return {
        "count": count,
        "p50": _ms(quantile(buckets, 0.50)),
        "p99": _ms(quantile(buckets, 0.99)),
    }


def _mean(
    before: dict[str, Scrape], after: dict[str, Scrape], names: list[str], metric: str
) -> float | None:
    total = sum(
        after[n].total(f"{metric}_sum") - before[n].total(f"{metric}_sum")
        for n in names
    )
    count = sum(
        after[n].total(f"{metric}_count") - before[n].total(f"{metric}_count")
        for n in names
    )
    return round(total / count, 2) if count else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
