"""The topology model: hub, regions, edges, core workers and store, as data.

A topology file is YAML that validates against `Topology`. Every process of a
mesh derives its configuration from one `Topology`, so the file is the single
source of truth for what runs where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ChatmeshError

NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# CQL identifiers: hyphens are not allowed unquoted.
KEYSPACE_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
# Port 0 means "pick a free loopback port when the mesh starts".
Port = Annotated[int, Field(ge=0, le=65535)]


class TopologyError(ChatmeshError):
    """A topology file is missing, unreadable or invalid."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HubNode(_Frozen):
    """One nats-server of the hub cluster."""

    name: Name
    host: str = "127.0.0.1"
    client_port: Port = 0
    cluster_port: Port = 0
    leaf_port: Port = 0
    monitor_port: Port = 0


class Hub(_Frozen):
    """The central NATS cluster with JetStream domain `hub`."""

    nodes: list[HubNode] = Field(min_length=1, max_length=5)
    stream_replicas: int = Field(default=1, ge=1, le=5)

    @model_validator(mode="after")
    def _check_replicas(self) -> Hub:
        if self.stream_replicas > len(self.nodes):
            raise ValueError(
                f"stream_replicas is {self.stream_replicas} but the hub has only "
                f"{len(self.nodes)} node(s); lower it or add hub nodes"
            )
        return self


class Leaf(_Frozen):
    """The regional NATS leaf node, with a JetStream domain named for its region."""

    host: str = "127.0.0.1"
    client_port: Port = 0
    monitor_port: Port = 0
    # The link proxy's listening ports for this leaf, one per hub node in the
    # order of `hub.nodes`. Used only when `links.proxy` is on; empty picks
    # free ports at start.
    hub_link_ports: list[Port] = Field(default_factory=list)


class Edge(_Frozen):
    """One edge process: the HTTP and WebSocket listener clients connect to."""

    name: Name
    host: str = "127.0.0.1"
    port: Port = 0


class Region(_Frozen):
    """A region: one leaf node, its edges, and its store datacenter."""

    name: Name
    leaf: Leaf = Leaf()
    edges: list[Edge] = Field(min_length=1)
    store_replication_factor: int = Field(default=1, ge=1, le=9)
    # The other regions, nearest first, that clients of this region fail over
    # to. Regions not listed follow in the topology's order.
    failover_order: list[Name] = Field(default_factory=list)


class Core(_Frozen):
    """The core workers: sequencer, router, session registry and sync service.

    `store_region` is the store datacenter the core reads and writes in
    (default: the first region); it should be the one nearest the hub. The
    worker serves Prometheus metrics at http://host:metrics_port/metrics.
    """

    # NOTE: one worker sequences every conversation; partitioning
    # conversations over several workers is not built yet.
    workers: int = Field(default=1, ge=1, le=1)
    store_region: Name | None = None
    host: str = "127.0.0.1"
    metrics_port: Port = 0


class ScyllaStore(_Frozen):
    """Connection settings for the ScyllaDB (or Cassandra) backend.

    With `local_nodes`, `chatmesh up` starts one Cassandra node per region on
    this machine (region i on 127.0.0.(i+1), all on `port`), each its own
    datacenter, and connects to them; otherwise it connects to
    `contact_points`.
    """

    contact_points: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    port: Port = 9042
    local_nodes: bool = False
    storage_port: Port = 7000
    local_heap_mb: int = Field(default=768, ge=256, le=32768)
    keyspace: Annotated[str, Field(pattern=KEYSPACE_PATTERN)] = "chatmesh"


StoreBackend = Literal["sqlite", "scylla"]


class Store(_Frozen):
    """The message store: embedded SQLite, or ScyllaDB across regions."""

    backend: StoreBackend = "sqlite"
    sqlite_path: str = "chatmesh.db"
    scylla: ScyllaStore = ScyllaStore()


class Rate(_Frozen):
    """A token bucket: `per_s` tokens come back each second, up to `burst`."""

    per_s: float = Field(gt=0)
    burst: float = Field(ge=1)


def unthrottled_rates() -> dict[str, dict[str, float]]:
    """Return rate settings that no load generator on one machine reaches.

    Benchmarks measure what the mesh can carry, so their meshes lift the
    per-client rate limits, which are meant for abusive clients.
    """
    rate = {"per_s": 1e9, "burst": 1e9}
    return {
        name: dict(rate)
        for name in (
            "messages_per_connection",
            "messages_per_user",
            "bytes_per_connection",
            "bytes_per_user",
            "presence_per_connection",
            "presence_per_user",
            "connections_per_user",
            "connections_per_ip",
        )
    }


class Limits(_Frozen):
    """Per-message, per-group and rate limits enforced at the edge and the core.

    Rates per user count every connection of the user on one edge. Affinity
    puts all of a user's connections in a region on one edge, so a user may
    use the rate once in each region. Byte rates count the UTF-8 size of
    every frame a client sends, whatever its type.
    """

    max_content_bytes: int = Field(default=4096, ge=1, le=65536)
    # A group has fewer members than this, so the join that would reach it fails.
    group_size_limit: int = Field(default=200, ge=2, le=10_000)
    messages_per_connection: Rate = Rate(per_s=10, burst=20)
    messages_per_user: Rate = Rate(per_s=20, burst=40)
    bytes_per_connection: Rate = Rate(per_s=64 * 1024, burst=256 * 1024)
    bytes_per_user: Rate = Rate(per_s=128 * 1024, burst=512 * 1024)
    presence_per_connection: Rate = Rate(per_s=2, burst=10)
    presence_per_user: Rate = Rate(per_s=4, burst=20)
    connections_per_user: Rate = Rate(per_s=1, burst=20)
    connections_per_ip: Rate = Rate(per_s=10, burst=100)


class Tls(_Frozen):
    """Certificates for the NATS listeners, leaf links and routes, as PEM files.

    `cert_file` must name every server host (hub nodes and leaf nodes) in its
    subject alternative names, because every nats-server presents it.
    `client_cert_file` is what leaf nodes present to the hub and hub nodes to
    each other, so leaf links and routes are mutual TLS. With
    `verify_clients`, the client listeners require a client certificate too,
    and the edges and core workers present `client_cert_file`. Relative
    paths are resolved from the directory `chatmesh up` runs in.
    """

    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str
    verify_clients: bool = False
    # How long a TLS handshake may take, in seconds (nats-server's `timeout`).
    handshake_timeout_s: float = Field(default=2.0, gt=0, le=60)


class Ingest(_Frozen):
    """How an edge batches client messages into its leaf's JetStream.

    A batch is sent when it contains `batch_max_messages` messages or
    `batch_max_bytes` bytes, or `batch_linger_ms` after its first message.
    At most `max_batches_in_flight` batches await JetStream's ack at once,
    and messages that arrive meanwhile wait for the next batch.
    `batch_max_messages` 1 with `batch_linger_ms` 0 stores each message alone.
    """

    batch_max_messages: int = Field(default=256, ge=1, le=4096)
    batch_max_bytes: int = Field(default=512 * 1024, ge=1024, le=900 * 1024)
    batch_linger_ms: float = Field(default=2.0, ge=0, le=100)
    max_batches_in_flight: int = Field(default=4, ge=1, le=64)


class Presence(_Frozen):
    """Presence settings: the report interval and when a silent user goes offline."""

    report_interval_s: float = Field(default=1.0, gt=0, le=60)
    offline_timeout_s: float = Field(default=10.0, gt=0, le=600)


class Links(_Frozen):
    """The network links between each region's leaf node and the hub."""

    # When on, the launcher runs a TCP proxy on every leaf-to-hub link, which
    # the chaos controls use to cut, heal and slow a region's link.
    proxy: bool = False
    host: str = "127.0.0.1"
    # The proxy's HTTP control API; 0 picks a free port.
    control_port: Port = 0
    # When on, leaf links also carry the bare-NATS benchmark's subjects
    # (`chatmesh.bench.>`). Benchmark meshes turn it on; production has no use.
    benchmark_subjects: bool = False


class Topology(_Frozen):
    """A whole mesh: one hub, one or more regions, core workers and a store."""

    name: Name
    hub: Hub
    regions: list[Region] = Field(min_length=1)
    core: Core = Core()
    store: Store = Store()
    limits: Limits = Limits()
    ingest: Ingest = Ingest()
    presence: Presence = Presence()
    links: Links = Links()
    tls: Tls | None = None
    dev_users: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_unique_names(self) -> Topology:
        _require_unique("regions", [r.name for r in self.regions])
        _require_unique("hub.nodes", [n.name for n in self.hub.nodes])
        _require_unique("edges", [e.name for r in self.regions for e in r.edges])
        names = {r.name for r in self.regions}
        if "hub" in names:
            raise ValueError("region name 'hub' is reserved for the hub's domain")
        if self.core.store_region is not None and self.core.store_region not in names:
            raise ValueError(
                f"core.store_region {self.core.store_region!r} is not a region; "
                f"use one of: {', '.join(sorted(names))}"
            )
        return self

    @model_validator(mode="after")
    def _check_regions(self) -> Topology:
        names = [r.name for r in self.regions]
        for region in self.regions:
            _check_failover_order(region, names)
            ports = region.leaf.hub_link_ports
            if ports and len(ports) != len(self.hub.nodes):
                raise ValueError(
                    f"region {region.name!r}: hub_link_ports has {len(ports)} "
                    f"port(s) but the hub has {len(self.hub.nodes)} node(s); "
                    "give one port per hub node or leave it empty"
                )
        return self

    @property
    def core_store_region(self) -> str:
        """Return the store datacenter of the core workers."""
        return self.core.store_region or self.regions[0].name

    def with_store_backend(self, backend: StoreBackend) -> Topology:
        """Return a copy whose store uses `backend`.

        A scylla store gets one local Cassandra node per region
        (`local_nodes`), because there is no cluster to point at.
        """
        update: dict[str, object] = {"backend": backend}
        if backend == "scylla":
            update["scylla"] = self.store.scylla.model_copy(
                update={"local_nodes": True}
            )
        return self.model_copy(update={"store": self.store.model_copy(update=update)})

    def get_region(self, name: str) -> Region:
        """Return the region called `name`, or raise `TopologyError`."""
        for region in self.regions:
            if region.name == name:
                return region
        known = ", ".join(r.name for r in self.regions)
        raise TopologyError(f"unknown region {name!r}; this topology has: {known}")

    def regions_by_nearness(self, name: str) -> list[Region]:
        """Return every region: `name`, its `failover_order`, then the others."""
        region = self.get_region(name)
        ordered = [name, *region.failover_order]
        ordered += [r.name for r in self.regions if r.name not in ordered]
        return [self.get_region(n) for n in ordered]


def _check_failover_order(region: Region, names: list[str]) -> None:
    _require_unique(f"regions.{region.name}.failover_order", region.failover_order)
    for other in region.failover_order:
        if other == region.name:
            raise ValueError(
                f"region {region.name!r} lists itself in failover_order; "
                "list only the other regions"
            )
        if other not in names:
            raise ValueError(
                f"region {region.name!r}: failover_order names unknown region "
                f"{other!r}; this topology has: {', '.join(names)}"
            )


def _require_unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(
                f"{field}: name {name!r} appears twice; names must be unique"
            )
        seen.add(name)


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file.

    Raises `TopologyError` naming the file, the field path and the bad value.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TopologyError(
            f"cannot read topology file {path}: {exc.strerror}"
        ) from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"topology file {path} is not valid YAML: {exc}") from exc
    return parse_topology(raw, source=str(path))


def parse_topology(raw: object, source: str = "<data>") -> Topology:
    """Validate already-parsed topology data; see `load_topology`."""
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        raise TopologyError(_describe(exc, source)) from exc


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid topology {source}:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(f"  {where}: {error['msg']}{shown}")
    return "\n".join(lines)


def default_topology_path() -> Path:
    """Return the path of the two-region topology shipped with the package."""
    return Path(__file__).parent / "topologies" / "two-region.yaml"
