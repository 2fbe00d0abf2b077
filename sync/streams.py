"""The JetStream streams that carry messages between regions and the hub.

Accepted messages are written to the region's leaf stream (`INGEST_<region>`)
and sourced into the hub's `INGEST`, which has no subjects of its own so a
publish can never be captured twice. Deliveries go the other way: the core
publishes to the hub's `DELIVER`, and each leaf sources its region's slice
into `DELIVER_<region>`. Sourcing is store-and-forward: while a link is
down, each side keeps what it has and the source catches up, in order,
when the link returns.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import NotFoundError

from core import subjects

log = structlog.get_logger(__name__)

# Accepted messages wait in the leaf stream for the hub for up to a week.
INGEST_MAX_AGE_S = 7 * 24 * 3600.0
# The idempotency window of the leaf stream; longer dedup is the store's job.
DUPLICATE_WINDOW_S = 120.0
# Deliveries are derived data: the store is the record, and clients that miss
# a delivery catch up from their cursor. The hub keeps them on disk so they
# survive its restart (it flushes lazily, so this is cheap); leaves keep
# them in memory, which spares the fsync every leaf write pays.
DELIVER_MAX_AGE_S = 15 * 60.0
DELIVER_MAX_BYTES = 256 * 1024 * 1024


def region_ingest_config(region: str) -> StreamConfig:
    return StreamConfig(
        name=subjects.region_ingest_stream(region),
        subjects=[subjects.ingest_filter(region)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=INGEST_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.NEW,
        num_replicas=1,
    )


def region_deliver_config(region: str) -> StreamConfig:
    source = StreamSource(
        name=subjects.HUB_DELIVER_STREAM,
        filter_subject=subjects.deliver_subject(region),
        external=ExternalStream(api=subjects.HUB_JS_API),
    )
    return StreamConfig(
        name=subjects.region_deliver_stream(region),
        sources=[source],
        storage=StorageType.MEMORY,
        max_age=DELIVER_MAX_AGE_S,
        max_bytes=DELIVER_MAX_BYTES,
        num_replicas=1,
    )


def hub_ingest_config(regions: Iterable[str], replicas: int) -> StreamConfig:
    sources = [
        StreamSource(
            name=subjects.region_ingest_stream(region),
            external=ExternalStream(api=subjects.leaf_js_api(region)),
        )
        for region in regions
    ]
    return StreamConfig(
        name=subjects.HUB_INGEST_STREAM,
        sources=sources,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=INGEST_MAX_AGE_S,
        num_replicas=replicas,
    )


def hub_deliver_config(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=subjects.HUB_DELIVER_STREAM,
        subjects=[subjects.DELIVER_ALL],
        storage=StorageType.FILE,
        max_age=DELIVER_MAX_AGE_S,
        max_bytes=DELIVER_MAX_BYTES,
        num_replicas=replicas,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to `config` when it already exists."""
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream.created", stream=config.name)
        return
    await js.update_stream(config)
    log.debug("stream.updated", stream=config.name)


async def ensure_region_streams(js: JetStreamContext, region: str) -> None:
    """Ensure a region's leaf streams; `js` must address the leaf's domain."""
    await ensure_stream(js, region_ingest_config(region))
    await ensure_stream(js, region_deliver_config(region))


async def ensure_mesh_streams(
    hub_js: JetStreamContext,
    region_js: dict[str, JetStreamContext],
    replicas: int,
) -> None:
    """Ensure every stream of the mesh, each before the streams that source it.

    A source whose origin stream is missing is retried by nats-server with a
    growing backoff, so creating origins first makes a fresh mesh flow at once.
    """
    await ensure_stream(hub_js, hub_deliver_config(replicas))
    for region, js in region_js.items():
        await ensure_region_streams(js, region)
    await ensure_stream(hub_js, hub_ingest_config(list(region_js), replicas))
