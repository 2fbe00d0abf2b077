"""Token-bucket rate limits of the edge: per connection, per user and per IP.

Every frame costs its UTF-8 size from the byte buckets. A `send` frame also
costs one token from the message buckets, and a `presence` frame one from
the presence buckets. A frame passes only if every bucket it draws from has
the tokens, and then it takes them from all. A rejected frame takes nothing,
and its error gives the wait until the tokens are back (`retry_after_ms`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.errors import RateLimited
from core.schema import PresenceFrame, SendFrame
from topology.model import Limits, Rate

Clock = Callable[[], float]
# A limiter prunes its idle (full) buckets once it contains this many keys.
PRUNE_AT_KEYS = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """One token bucket per key, all with the same `Rate`."""

    def __init__(self, rate: Rate, name: str, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.name = name
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def wait_s(self, key: str, amount: float) -> float:
        """Return how long until `amount` tokens are there for `key` (0: now)."""
        bucket = self._refilled(key)
        missing = min(amount, self.rate.burst) - bucket.tokens
        return max(0.0, missing / self.rate.per_s)

    def take(self, key: str, amount: float) -> None:
        """Take `amount` tokens (at most a full bucket); call `wait_s` first."""
        bucket = self._refilled(key)
        bucket.tokens -= min(amount, self.rate.burst)

    def keys(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT_KEYS:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.rate.burst, now)
            return bucket
        gained = (now - bucket.stamp) * self.rate.per_s
        bucket.tokens = min(self.rate.burst, bucket.tokens + gained)
        bucket.stamp = now
        return bucket

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket at all.
        per_s, burst = self.rate.per_s, self.rate.burst
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * per_s < burst
        }


Charge = tuple[RateLimiter, str, float]


def take_all(charges: Sequence[Charge], what: str, ref: str | None = None) -> None:
    """Take every charge, or none and raise `RateLimited` naming the limit hit."""
    worst: tuple[float, RateLimiter] | None = None
    for limiter, key, amount in charges:
        wait = limiter.wait_s(key, amount)
        if wait > 0 and (worst is None or wait > worst[0]):
            worst = (wait, limiter)
    if worst is not None:
        wait, limiter = worst
        retry_ms = max(1, math.ceil(wait * 1000))
        raise RateLimited(
            f"too many {what}: the limit is {limiter.rate.per_s:g} per second "
            f"{limiter.name} (bursts up to {limiter.rate.burst:g}); "
            f"retry in {retry_ms} ms",
            retry_after_ms=retry_ms,
            ref=ref,
        )
    for limiter, key, amount in charges:
        limiter.take(key, amount)


class EdgeLimits:
    """The rate limiters of one edge, built from the topology's `limits`."""

    def __init__(self, limits: Limits, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.user_messages = RateLimiter(limits.messages_per_user, "per user", clock)
        self.user_bytes = RateLimiter(limits.bytes_per_user, "per user", clock)
        self.user_presence = RateLimiter(limits.presence_per_user, "per user", clock)
        self.user_connections = RateLimiter(
            limits.connections_per_user, "per user", clock
        )
        self.ip_connections = RateLimiter(
            limits.connections_per_ip, "per IP address", clock
        )

    def for_connection(self) -> ConnectionLimits:
        return ConnectionLimits(self, self._clock)

    def check_ip(self, ip: str) -> None:
        take_all([(self.ip_connections, ip, 1)], "connection attempts")

    def check_user_connect(self, user: str) -> None:
        take_all([(self.user_connections, user, 1)], "connection attempts")


class ConnectionLimits:
    """The buckets of one connection, charged together with its user's."""

    def __init__(self, edge: EdgeLimits, clock: Clock) -> None:
        limits = edge.limits
        self._edge = edge
        self._messages = RateLimiter(
            limits.messages_per_connection, "per connection", clock
        )
        self._bytes = RateLimiter(limits.bytes_per_connection, "per connection", clock)
        self._presence = RateLimiter(
            limits.presence_per_connection, "per connection", clock
        )

    def charge_bytes(self, user: str, size: int) -> None:
        """Charge a frame's size before it is decoded."""
        charges = [(self._bytes, "", size), (self._edge.user_bytes, user, size)]
        take_all(charges, "bytes")

    def charge_frame(self, user: str, frame: object) -> None:
        """Charge a decoded frame to the message or presence buckets, if any."""
        if isinstance(frame, SendFrame):
            charges = [(self._messages, "", 1), (self._edge.user_messages, user, 1)]
            take_all(charges, "messages", ref=frame.id)
        elif isinstance(frame, PresenceFrame):
            charges = [(self._presence, "", 1), (self._edge.user_presence, user, 1)]
            take_all(charges, "presence queries", ref=frame.id)
