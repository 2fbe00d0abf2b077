"""Restart stream sources that stalled although their origin is reachable again.

nats-server retries a source that failed after a growing delay: 10 s after
the first failure, 20 s after the second, and so on up to 2 minutes
(`calculateRetryBackoff` in nats-server's server/stream.go). So after its
region or the hub was down for half a minute, a source may stay idle for
another half minute while both ends are up, and the messages waiting in the
origin stream wait with it. With nats-server 2.15.1, a message sent after a
25 s leaf outage reached the hub 32 s later.

A source that hears nothing from its origin for `STALL_S` has stalled: a
working source hears from it about once a second, idle or not (measured
with nats-server 2.15.1). When the origin then responds to a JetStream
request, the watchdog removes the source from the stream's config and adds
it back. nats-server sets up a source added back at once, and resumes it
after the last message it had copied, which it finds by scanning the
stream.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamSourceInfo

log = structlog.get_logger(__name__)

STALL_S = 5.0
# A source restarted this recently is left alone, so that a source that
# stays stalled for another reason is not restarted over and over.
RESTART_INTERVAL_S = 15.0
NANOSECONDS = 1_000_000_000

# Returns whether the origin of the source named by the argument is reachable.
OriginProbe = Callable[[str], Awaitable[bool]]


def stalled(source: StreamSourceInfo) -> bool:
    """Return whether `source` has heard nothing from its origin for `STALL_S`."""
    return source.active is not None and source.active > STALL_S * NANOSECONDS


class SourceWatchdog:
    """Restarts the stalled sources of one stream; call `check` periodically."""

    def __init__(
        self,
        js: JetStreamContext,
        config: StreamConfig,
        origin_reachable: OriginProbe,
        owner: str,
    ) -> None:
        self._js = js
        self._config = config
        self._origin_reachable = origin_reachable
        self._owner = owner
        self._restarted_at: dict[str, float] = {}

    async def check(self) -> list[str]:
        """Restart the sources that stalled while their origin is reachable.

        Returns the names of the sources restarted.
        """
        name = self._config.name or ""
        info = await self._js.stream_info(name)
        present = {source.name for source in info.sources or []}
        if any(s.name not in present for s in self._config.sources or []):
            # A restart that failed half-way left a source out of the stream.
            log.warning("sources.missing", stream=name, present=sorted(present))
            await self._js.update_stream(self._config)
        restarted = []
        for source in info.sources or []:
            if not stalled(source) or self._restarted_recently(source.name):
                continue
            if not await self._origin_reachable(source.name):
                continue
            await self._restart(source.name)
            restarted.append(source.name)
        return restarted

    def _restarted_recently(self, source: str) -> bool:
        last = self._restarted_at.get(source)
        return last is not None and time.monotonic() - last < RESTART_INTERVAL_S

    async def _restart(self, source: str) -> None:
        config = self._config
        others = [s for s in config.sources or [] if s.name != source]
        log.warning(
            "sources.restarting",
            stream=config.name,
            source=source,
            owner=self._owner,
        )
        self._restarted_at[source] = time.monotonic()
        await self._js.update_stream(dataclasses.replace(config, sources=others))
        await self._js.update_stream(config)
        log.info("sources.restarted", stream=config.name, source=source)
