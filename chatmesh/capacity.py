"""`chatmesh capacity`: size a deployment from assumptions and measured costs.

Every figure in the output names its source. A source is an assumption (a
command-line option, whose defaults size for 1B users), a measurement (a
field of a `chatmesh bench --json` report), or a derivation from the two. The
model is arithmetic, not a simulation: it multiplies per-message and
per-connection costs by the load and rounds counts up.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.schema import Delivery, IngestEnvelope, Origin, StoredMessage

# Bytes of JSON around the content of one envelope and one delivery, with
# typical user and id lengths: `wire_overhead` measures them from the schema.
SAMPLE_USER = "user-0123456789"


@dataclass(frozen=True)
class Assumptions:
    """Load and hardware figures that no benchmark here measures."""

    users: float = 1e9
    daily_active_share: float = 0.2
    online_share: float = 0.25
    messages_per_online_user_s: float = 0.2
    message_bytes: float = 500
    regions: int = 5
    connections_per_server: float = 2e6
    cores_per_server: int = 32
    bytes_per_connection: float = 32 * 1024
    connections_per_edge_process: float = 50_000
    heartbeat_interval_s: float = 30.0
    presence_interval_s: float = 1.0
    full_report_every: int = 10
    session_minutes: float = 30.0
    watched_contacts: float = 50.0
    store_writes_per_node_s: float = 50_000.0
    store_replication: int = 3


@dataclass(frozen=True)
class Measured:
    """Per-message and per-process costs taken from one benchmark report."""

    source: str
    edge_cpu_s_per_message: float
    core_cpu_s_per_message: float
    nats_cpu_s_per_message: float
    sequencer_messages_per_s: float
    hub_deliveries_per_message: float
    receipts_per_message: float
    edge_batch_mean: float | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One figure of the model with its unit and where it came from."""

    name: str
    value: float
    unit: str
    source: str


def measured_from_report(path: Path) -> Measured:
    """Read per-message costs from the mesh run of a `chatmesh bench --json` report."""
    report = json.loads(path.read_text())
    runs = [r for r in report.get("runs", []) if r.get("target") == "mesh"]
    if not runs:
        raise ValueError(
            f"{path} has no mesh run; write one with `chatmesh bench --targets mesh "
            "--json FILE`"
        )
    run = runs[0]
    messages = float(run["messages_per_s"]) * float(run["duration_s"])
    if messages <= 0:
        raise ValueError(f"{path}: the mesh run completed no messages; rerun the bench")

    def cpu_s(prefix: str) -> float:
        share = sum(
            float(p["cpu_percent"])
            for p in run["processes"]
            if p["name"].startswith(prefix)
        )
        return share / 100 * float(run["duration_s"]) / messages

    metrics = run.get("mesh_metrics", {})
    receipts = run["receipts"] / run["completed"] if run["completed"] else 1.0
    return Measured(
        source=f"{path} ({report.get('command', 'chatmesh bench')})",
        edge_cpu_s_per_message=cpu_s("edge-"),
        core_cpu_s_per_message=cpu_s("core-"),
        nats_cpu_s_per_message=cpu_s("hub-") + cpu_s("leaf-"),
        sequencer_messages_per_s=run["messages_per_s"],
        hub_deliveries_per_message=float(
            metrics.get("hub_deliveries_per_message") or 1.0
        ),
        receipts_per_message=receipts,
        edge_batch_mean=metrics.get("edge_batch_mean"),
        details={
            "load_average": run.get("load_average_after"),
            "clients": report.get("clients"),
            "regions": report.get("mesh", {}).get("regions"),
        },
    )


def wire_overhead(message_bytes: float) -> tuple[float, float]:
    """Return the JSON bytes of one ingest envelope and one delivery of a message."""
    content = "x" * int(message_bytes)
    origin = Origin(region="region-1", edge="region-1-edge-1", connection="e-123456")
    envelope = IngestEnvelope(
        sender=SAMPLE_USER,
        recipient=SAMPLE_USER,
        client_msg_id="0123456789abcdef0123456789abcdef",
        content=content,
        accepted_at_ms=1_800_000_000_000,
        origin=origin,
    )
    message = StoredMessage(
        message_id=2**62,
        conversation=f"dm:{SAMPLE_USER}:{SAMPLE_USER}",
        seq=123_456,
        sender=SAMPLE_USER,
        recipient=SAMPLE_USER,
        content=content,
        timestamp_ms=1_800_000_000_000,
        client_msg_id="0123456789abcdef0123456789abcdef",
    )
    delivery = Delivery(
        message=message,
        recipients=[SAMPLE_USER, SAMPLE_USER],
        origin=origin,
        committed_at_ms=1_800_000_000_000,
    )
    return (
        float(len(envelope.model_dump_json())),
        float(len(delivery.model_dump_json())),
    )


def capacity_model(a: Assumptions, m: Measured) -> list[Row]:
    """Derive the deployment's size from assumptions `a` and measurements `m`."""
    assumed, measured, derived = "assumed", "measured", "derived"
    online = a.users * a.daily_active_share * a.online_share
    rate = online * a.messages_per_online_user_s
    per_region_online = online / a.regions
    per_region_rate = rate / a.regions
    envelope_bytes, delivery_bytes = wire_overhead(a.message_bytes)
    rows = [
        Row("online users", online, "users", f"{derived}: users x daily x online"),
        Row("messages", rate, "msg/s", f"{derived}: online x rate per user"),
        Row(
            "message payload",
            rate * a.message_bytes,
            "B/s",
            f"{derived}: {assumed} size",
        ),
        Row(
            "online users per region",
            per_region_online,
            "users",
            f"{derived}: even split",
        ),
    ]
    rows += _servers(a, m, per_region_online, per_region_rate, measured)
    rows += _core(a, m, rate, measured)
    rows += _bandwidth(a, m, per_region_rate, envelope_bytes, delivery_bytes, measured)
    edge_processes = _edge_processes(a, m, per_region_online, per_region_rate)
    rows += _presence(a, online, edge_processes * a.regions)
    return rows


def _edge_processes(a: Assumptions, m: Measured, online: float, rate: float) -> int:
    """Return edge processes per region: enough for the connections and the CPU."""
    by_connections = math.ceil(online / a.connections_per_edge_process)
    by_cpu = math.ceil(rate * m.edge_cpu_s_per_message)
    return max(by_connections, by_cpu, 1)


def _servers(
    a: Assumptions, m: Measured, online: float, rate: float, measured: str
) -> list[Row]:
    by_connections = math.ceil(online / a.connections_per_server)
    edge_cores = rate * m.edge_cpu_s_per_message
    by_cpu = math.ceil(edge_cores / a.cores_per_server)
    memory_gib = online * a.bytes_per_connection / 2**30
    return [
        Row(
            "edge servers per region, by connections",
            by_connections,
            "servers",
            f"derived: {a.connections_per_server:,.0f} per server (assumed)",
        ),
        Row(
            "edge CPU per region",
            edge_cores,
            "cores",
            f"derived: {_us(m.edge_cpu_s_per_message)} per message ({measured})",
        ),
        Row(
            "edge servers per region, by CPU",
            by_cpu,
            "servers",
            f"derived: {a.cores_per_server} cores per server (assumed)",
        ),
        Row(
            "edge servers per region",
            max(by_connections, by_cpu),
            "servers",
            "derived: the larger of the two",
        ),
        Row(
            "edge processes per region",
            _edge_processes(a, m, online, rate),
            "processes",
            f"derived: {a.connections_per_edge_process:,.0f} connections "
            "(assumed) or one busy core each, whichever needs more",
        ),
        Row(
            "connection memory per region",
            memory_gib,
            "GiB",
            f"derived: {a.bytes_per_connection:,.0f} B per idle connection (assumed)",
        ),
    ]


def _core(a: Assumptions, m: Measured, rate: float, measured: str) -> list[Row]:
    shards = math.ceil(rate / m.sequencer_messages_per_s)
    store_writes = rate * a.store_replication
    return [
        Row(
            "sequencer throughput",
            m.sequencer_messages_per_s,
            "msg/s",
            f"{measured}, flat out, one sequencer",
        ),
        Row(
            "sequencer shards (hub INGEST streams and consumers)",
            shards,
            "shards",
            "derived: messages / sequencer throughput, one stream per shard",
        ),
        Row(
            "core CPU",
            rate * m.core_cpu_s_per_message,
            "cores",
            f"derived: {_us(m.core_cpu_s_per_message)} per message ({measured})",
        ),
        Row(
            "NATS CPU (leaves and hub)",
            rate * m.nats_cpu_s_per_message,
            "cores",
            f"derived: {_us(m.nats_cpu_s_per_message)} per message ({measured})",
        ),
        Row(
            "store replica writes",
            store_writes,
            "writes/s",
            f"derived: {a.store_replication} replicas (assumed)",
        ),
        Row(
            "store nodes",
            math.ceil(store_writes / a.store_writes_per_node_s),
            "nodes",
            f"derived: {a.store_writes_per_node_s:,.0f} writes/s per node (assumed)",
        ),
    ]


def _bandwidth(
    a: Assumptions,
    m: Measured,
    rate: float,
    envelope_bytes: float,
    delivery_bytes: float,
    measured: str,
) -> list[Row]:
    upward = rate * envelope_bytes
    downward = rate * m.hub_deliveries_per_message * delivery_bytes
    return [
        Row(
            "ingest envelope size",
            envelope_bytes,
            "B",
            f"derived: JSON of the schema with {a.message_bytes:,.0f} B of content",
        ),
        Row("delivery size", delivery_bytes, "B", "derived: JSON of the schema"),
        Row(
            "hub deliveries per message",
            m.hub_deliveries_per_message,
            "copies",
            f"{measured}; one per region with a recipient, not per recipient",
        ),
        Row(
            "region to hub, per region",
            upward,
            "B/s",
            "derived: messages x envelope size",
        ),
        Row(
            "hub to region, per region",
            downward,
            "B/s",
            "derived: messages x deliveries per message x delivery size",
        ),
        Row(
            "cross-region total",
            (upward + downward) * a.regions,
            "B/s",
            "derived: both directions, all regions",
        ),
    ]


def _presence(a: Assumptions, online: float, edges: int) -> list[Row]:
    heartbeats = online / a.heartbeat_interval_s
    reports = edges / a.presence_interval_s
    # Each session starts and ends once: two changes per session length.
    changes = 2 * online / (a.session_minutes * 60)
    user_bytes = len(SAMPLE_USER) + 3
    full_bytes = online * user_bytes / (a.full_report_every * a.presence_interval_s)
    return [
        Row(
            "client heartbeats (stop at the edge)",
            heartbeats,
            "msg/s",
            f"derived: one per {a.heartbeat_interval_s:.0f} s (assumed)",
        ),
        Row(
            "presence reports to the hub",
            reports,
            "msg/s",
            "derived: one per edge process per interval",
        ),
        Row(
            "hub messages per heartbeat",
            reports / heartbeats,
            "ratio",
            "derived: reports / heartbeats",
        ),
        Row(
            "presence changes",
            changes,
            "changes/s",
            f"derived: 2 per session of {a.session_minutes:.0f} min (assumed)",
        ),
        Row(
            "delta report bytes to the hub",
            changes * user_bytes,
            "B/s",
            "derived: changes x user id",
        ),
        Row(
            "full report bytes to the hub",
            full_bytes,
            "B/s",
            f"derived: every user every {a.full_report_every} intervals",
        ),
        Row(
            "presence change bytes to every edge",
            changes * 120,
            "B/s",
            "derived: about 120 B of JSON per change; each edge receives all",
        ),
        Row(
            "presence watches held by edges",
            online * a.watched_contacts,
            "watches",
            f"derived: {a.watched_contacts:.0f} watched contacts per user (assumed)",
        ),
    ]


def format_rows(rows: list[Row], m: Measured) -> str:
    """Return the rows as a table, after a line naming the measured report."""
    width = max(len(r.name) for r in rows)
    lines = [f"measured figures from {m.source}", ""]
    lines += [
        f"{r.name:<{width}}  {_human(r.value):>10} {r.unit:<9} {r.source}" for r in rows
    ]
    return "\n".join(lines)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def _human(value: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:,.2f}{suffix}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.3g}"
