"""Build the message store a topology's `store` section configures."""

from __future__ import annotations

from pathlib import Path

from core.store.base import MessageStore
from core.store.cql_migrations import replication_from_regions
from core.store.scylla import ScyllaStore
from core.store.sqlite import SqliteStore
from topology import model


def open_store(
    store: model.Store,
    topology_regions: list[model.Region],
    local_region: str,
    base_dir: Path,
) -> MessageStore:
    """Return an unopened store; call `ensure_schema()` before first use.

    SQLite: `store.sqlite_path` is taken relative to `base_dir` unless it is
    absolute. ScyllaDB: each region of the topology is one datacenter, named
    like the region and replicated `store_replication_factor` times, and
    `local_region` is the datacenter this process sends requests to.
    """
    region_names = [region.name for region in topology_regions]
    if local_region not in region_names:
        raise ValueError(
            f"local region {local_region!r} is not in the topology's regions "
            f"{region_names}"
        )
    if store.backend == "sqlite":
        return SqliteStore(base_dir / store.sqlite_path)
    settings = store.scylla
    return ScyllaStore(
        contact_points=list(settings.contact_points),
        port=settings.port,
        keyspace=settings.keyspace,
        local_datacenter=local_region,
        replication=replication_from_regions(topology_regions),
    )
