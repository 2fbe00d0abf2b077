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


class Core(_Frozen):
    """The core workers: sequencer, router, session registry and sync service.

    The worker serves Prometheus metrics at http://host:metrics_port/metrics.
    """

    workers: int = Field(default=1, ge=1, le=1)
    host: str = "127.0.0.1"
    metrics_port: Port = 0


class ScyllaStore(_Frozen):
    """Connection settings for the ScyllaDB (or Cassandra) backend."""

    contact_points: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    port: Port = 9042
    keyspace: Name = "chatmesh"


class Store(_Frozen):
    """Where messages are kept: embedded SQLite, or ScyllaDB across regions."""

    backend: Literal["sqlite", "scylla"] = "sqlite"
    sqlite_path: str = "chatmesh.db"
    scylla: ScyllaStore = ScyllaStore()


class Limits(_Frozen):
    """Per-message and per-group limits enforced at the edge and the core."""

    max_content_bytes: int = Field(default=4096, ge=1, le=65536)
    # A group holds fewer members than this: the join that would reach it fails.
    group_size_limit: int = Field(default=200, ge=2, le=10_000)


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
    """How edges report sessions and how long a silent user stays online."""

    report_interval_s: float = Field(default=1.0, gt=0, le=60)
    offline_timeout_s: float = Field(default=10.0, gt=0, le=600)


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
    dev_users: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_unique_names(self) -> Topology:
        _require_unique("regions", [r.name for r in self.regions])
        _require_unique("hub.nodes", [n.name for n in self.hub.nodes])
        _require_unique("edges", [e.name for r in self.regions for e in r.edges])
        if "hub" in {r.name for r in self.regions}:
            raise ValueError("region name 'hub' is reserved for the hub's domain")
        return self

    def get_region(self, name: str) -> Region:
        """Return the region called `name`, or raise `TopologyError`."""
        for region in self.regions:
            if region.name == name:
                return region
        known = ", ".join(r.name for r in self.regions)
        raise TopologyError(f"unknown region {name!r}; this topology has: {known}")


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
