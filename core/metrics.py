"""Prometheus metrics of every chatmesh process, with every metric name in one place.

Each process owns one `CollectorRegistry`: the edge serves it at `/metrics`
on its HTTP port, the core on its `metrics_port`. Latencies are histograms
in seconds. Times that cross processes (`accepted_at_ms`, `committed_at_ms`)
are wall-clock milliseconds, so a histogram of them is only as exact as the
clocks of the two hosts agree.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, from half a millisecond to ten seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# ---- names shared by every process -------------------------------------------
ERRORS = "chatmesh_errors_total"

# ---- edge --------------------------------------------------------------------
EDGE_CONNECTIONS = "chatmesh_edge_connections"
EDGE_CONNECTIONS_OPENED = "chatmesh_edge_connections_opened_total"
EDGE_ACCEPTED = "chatmesh_edge_messages_accepted_total"
EDGE_DELIVERIES = "chatmesh_edge_deliveries_received_total"
EDGE_DELIVERED = "chatmesh_edge_messages_delivered_total"
EDGE_HEARTBEATS = "chatmesh_edge_heartbeats_total"
EDGE_PRESENCE_REPORTS = "chatmesh_edge_presence_reports_total"
EDGE_ACCEPT_SECONDS = "chatmesh_edge_accept_seconds"
EDGE_BATCH_MESSAGES = "chatmesh_edge_ingest_batch_messages"
EDGE_COMMIT_TO_FANOUT_SECONDS = "chatmesh_edge_commit_to_fanout_seconds"
EDGE_END_TO_END_SECONDS = "chatmesh_edge_end_to_end_seconds"

# ---- core --------------------------------------------------------------------
CORE_RECEIVED = "chatmesh_core_messages_received_total"
CORE_COMMITTED = "chatmesh_core_messages_committed_total"
CORE_DUPLICATES = "chatmesh_core_messages_duplicate_total"
CORE_REJECTED = "chatmesh_core_messages_rejected_total"
CORE_DELIVERIES = "chatmesh_core_deliveries_published_total"
CORE_EDGE_TO_CORE_SECONDS = "chatmesh_core_edge_to_core_seconds"
CORE_STORE_WRITE_SECONDS = "chatmesh_core_store_write_seconds"
CORE_ROUTE_SECONDS = "chatmesh_core_route_seconds"
CORE_COMMIT_BATCH_MESSAGES = "chatmesh_core_commit_batch_messages"
CORE_SYNC_LAG = "chatmesh_core_sync_lag_messages"
CORE_PENDING = "chatmesh_core_sequencer_pending_messages"
CORE_PRESENCE_REPORTS = "chatmesh_core_presence_reports_total"
CORE_PRESENCE_CHANGES = "chatmesh_core_presence_changes_total"
CORE_ONLINE_USERS = "chatmesh_core_online_users"


def _errors(registry: CollectorRegistry) -> Counter:
    return Counter(
        ERRORS,
        "Errors by kind: a client error code, or what failed inside the process.",
        ["kind"],
        registry=registry,
    )


def _latency(name: str, text: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(name, text, buckets=LATENCY_BUCKETS, registry=registry)


class EdgeMetrics:
    """The metrics of one edge process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.errors = _errors(r)
        self.connections = Gauge(
            EDGE_CONNECTIONS, "Open client connections.", [], registry=r
        )
        self.connections_opened = Counter(
            EDGE_CONNECTIONS_OPENED, "Authenticated connections opened.", registry=r
        )

        self.accepted = Counter(
            EDGE_ACCEPTED, "Messages stored in the leaf's JetStream.", registry=r
        )
        self.deliveries = Counter(
            EDGE_DELIVERIES, "Deliveries read from the region's stream.", registry=r
        )
        self.delivered = Counter(
            EDGE_DELIVERED,
            "Message and committed events pushed to local connections.",
            registry=r,
        )
        self.heartbeats = Counter(
            EDGE_HEARTBEATS, "Ping frames received from clients.", registry=r
        )
        self.presence_reports = Counter(
            EDGE_PRESENCE_REPORTS, "Presence reports sent to the hub.", registry=r
        )

        self.accept_seconds = _latency(
            EDGE_ACCEPT_SECONDS,
            "From a send frame's arrival to its accepted event (client to edge ack).",
            r,
        )
        self.batch_messages = Histogram(
            EDGE_BATCH_MESSAGES,
            "Client messages per JetStream message sent to the leaf.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_to_fanout_seconds = _latency(
            EDGE_COMMIT_TO_FANOUT_SECONDS,
            "From the core's commit to the fan-out on this edge (hub to edge).",
            r,
        )
        self.end_to_end_seconds = _latency(
            EDGE_END_TO_END_SECONDS,
            "From acceptance at the origin edge to the fan-out on this edge.",
            r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CoreMetrics:
    """The metrics of one core worker process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.errors = _errors(r)

        self.received = Counter(
            CORE_RECEIVED, "Client messages read from the hub's INGEST.", registry=r
        )
        self.committed = Counter(
            CORE_COMMITTED, "Client messages sequenced and stored.", registry=r
        )
        self.duplicates = Counter(
            CORE_DUPLICATES,
            "Client messages already stored under their (sender, client id).",
            registry=r,
        )
        self.rejected = Counter(
            CORE_REJECTED, "Client messages refused by the sequencer.", registry=r
        )
        self.deliveries = Counter(
            CORE_DELIVERIES,
            "Deliveries published to the hub's DELIVER stream, by region.",
            ["region"],
            registry=r,
        )

        self.edge_to_core_seconds = _latency(
            CORE_EDGE_TO_CORE_SECONDS,
            "From acceptance at the edge to the core's receipt (edge to hub).",
            r,
        )
        self.store_write_seconds = _latency(
            CORE_STORE_WRITE_SECONDS, "Duration of one store write (hub to store).", r
        )
        self.route_seconds = _latency(
            CORE_ROUTE_SECONDS,
            "From the store write to the hub's ack of every delivery.",
            r,
        )
        self.commit_batch_messages = Histogram(
            CORE_COMMIT_BATCH_MESSAGES,
            "Client messages committed per store write.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

        self.sync_lag = Gauge(
            CORE_SYNC_LAG,
            "Messages of a region's leaf INGEST not yet sourced by the hub.",
            ["region"],
            registry=r,
        )
        self.pending = Gauge(
            CORE_PENDING,
            "Messages of the hub's INGEST not yet acked by the sequencer.",
            registry=r,
        )

        self.presence_reports = Counter(
            CORE_PRESENCE_REPORTS, "Presence reports received from edges.", registry=r
        )
        self.presence_changes = Counter(
            CORE_PRESENCE_CHANGES, "Presence changes published to edges.", registry=r
        )
        self.online_users = Gauge(
            CORE_ONLINE_USERS, "Users the session registry counts online.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` at http://host:port/metrics from a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics.serving", host=host, port=port)
    return server, thread
