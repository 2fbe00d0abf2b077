"""Rate limits: the token buckets alone, then a real edge rejecting a flood."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import websockets

from chatmesh.client import ChatError
from core.errors import RateLimited
from core.schema import ErrorEvent, PongEvent
from edge.limits import RateLimiter, take_all
from tests.conftest import (
    Clients,
    region_edge_url,
    small_topology,
    start_mesh,
    token_for,
)
from topology.launcher import Mesh
from topology.model import Rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(per_s=2, burst=3), "per connection", clock)
    for _ in range(3):
        take_all([(limiter, "k", 1)], "messages")
    with pytest.raises(RateLimited) as caught:
        take_all([(limiter, "k", 1)], "messages", ref="m4")

    assert caught.value.retry_after_ms == 500
    assert caught.value.ref == "m4"
    assert "2 per second per connection" in caught.value.message
    clock.now += 0.5
    take_all([(limiter, "k", 1)], "messages")


def test_rejected_charge_takes_from_no_bucket() -> None:
    clock = FakeClock()
    roomy = RateLimiter(Rate(per_s=1, burst=10), "per connection", clock)
    tight = RateLimiter(Rate(per_s=1, burst=1), "per user", clock)
    take_all([(roomy, "", 1), (tight, "alice", 1)], "messages")
    with pytest.raises(RateLimited, match="per user"):
        take_all([(roomy, "", 1), (tight, "alice", 1)], "messages")
    assert roomy.wait_s("", 9) == 0.0
    assert roomy.wait_s("", 10) == pytest.approx(1.0)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(Rate(per_s=1, burst=1), "per user", FakeClock())
    take_all([(limiter, "alice", 1)], "messages")
    take_all([(limiter, "bob", 1)], "messages")
    with pytest.raises(RateLimited):
        take_all([(limiter, "alice", 1)], "messages")


def test_oversized_charge_empties_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(per_s=100, burst=1000), "per connection", clock)
    take_all([(limiter, "", 5000)], "bytes")
    with pytest.raises(RateLimited) as caught:
        take_all([(limiter, "", 1)], "bytes")
    assert caught.value.retry_after_ms == 10


def test_idle_buckets_are_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge.limits.PRUNE_AT_KEYS", 100)
    clock = FakeClock()
    limiter = RateLimiter(Rate(per_s=1, burst=5), "per IP address", clock)
    for i in range(100):
        take_all([(limiter, f"10.0.0.{i}", 1)], "connection attempts")
    clock.now += 60
    take_all([(limiter, "new", 1)], "connection attempts")
    assert limiter.keys() == 1


# ---- against a real edge ----------------------------------------------------

MESSAGES = {"per_s": 2, "burst": 3}
LIMITS: dict[str, Any] = {
    "messages_per_connection": MESSAGES,
    "messages_per_user": {"per_s": 2, "burst": 5},
    "presence_per_connection": {"per_s": 1, "burst": 2},
    "bytes_per_connection": {"per_s": 20_000, "burst": 20_000},
    "connections_per_user": {"per_s": 0.05, "burst": 4},
    "connections_per_ip": {"per_s": 0.05, "burst": 30},
}


@pytest.fixture(scope="module")
def limited_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    topology = small_topology("limited-mesh", limits=LIMITS)
    mesh = start_mesh(topology, tmp_path_factory.mktemp("limits"))
    try:
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
async def clients(limited_mesh: Mesh) -> AsyncIterator[Clients]:
    opened = Clients(limited_mesh)
    try:
        yield opened
    finally:
        await opened.close_all()


async def test_message_flood_limited_connection_kept(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    for i in range(3):
        await alice.send("bob", f"burst {i}")
    with pytest.raises(ChatError) as caught:
        await alice.send("bob", "one too many")

    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after_ms is not None
    assert 0 < caught.value.retry_after_ms <= 500
    assert "per connection" in caught.value.message
    await alice.send_raw('{"type": "ping"}')
    await alice.wait_for(lambda e: isinstance(e, PongEvent))
    await asyncio.sleep(caught.value.retry_after_ms / 1000 + 0.6)
    accepted = await alice.send("bob", "after the pause")
    assert accepted.duplicate is False


async def test_user_limit_spans_connections(clients: Clients) -> None:
    phone = await clients.connect("carol", "eu-west")
    laptop = await clients.connect("carol", "eu-west")
    for i in range(3):
        await phone.send("bob", f"phone {i}")
    await laptop.send("bob", "laptop 0")
    await laptop.send("bob", "laptop 1")
    with pytest.raises(ChatError) as caught:
        await laptop.send("bob", "laptop 2")
    assert caught.value.code == "rate_limited"
    assert "per user" in caught.value.message


async def test_presence_queries_limited(clients: Clients) -> None:
    dave = await clients.connect("dave", "us-east")
    await dave.presence(["dave"])
    await dave.presence(["dave"])
    with pytest.raises(ChatError) as caught:
        await dave.presence(["dave"])
    assert caught.value.code == "rate_limited"
    assert "presence queries" in caught.value.message


async def test_bytes_limited_whatever_the_frame(clients: Clients) -> None:
    bob = await clients.connect("bob", "us-east")
    padding = "x" * 15_000
    # Malformed frames cost their bytes too: the second one exceeds the bucket.
    await bob.send_raw(json.dumps({"type": "shout", "padding": padding}))
    first = await bob.wait_for(lambda e: isinstance(e, ErrorEvent))
    await bob.send_raw(json.dumps({"type": "shout", "padding": padding}))
    second = await bob.wait_for(lambda e: isinstance(e, ErrorEvent))

    assert first.code == "malformed_frame"
    assert second.code == "rate_limited"
    assert "bytes" in second.message
    assert second.retry_after_ms is not None


async def test_connection_attempts_per_user_limited(limited_mesh: Mesh) -> None:
    url = region_edge_url(limited_mesh, "us-east")
    token = token_for(limited_mesh, "erin")
    opened = []
    try:
        for _ in range(4):
            ws = await websockets.connect(url)
            opened.append(ws)
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await ws.recv())["type"] == "hello"
        rejected = await websockets.connect(url)
        await rejected.send(json.dumps({"type": "auth", "token": token}))
        error = json.loads(await rejected.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await rejected.recv()
    finally:
        for ws in opened:
            await ws.close()

    assert error["code"] == "rate_limited"
    assert error["retry_after_ms"] > 0
    assert "connection attempts" in error["message"]
    assert rejected.close_code == 4029


async def test_connection_attempts_per_ip_limited(limited_mesh: Mesh) -> None:
    url = region_edge_url(limited_mesh, "eu-west")
    noisy_ip, quiet_ip = "127.0.0.2", "127.0.0.3"
    statuses = [await _attempt(url, noisy_ip) for _ in range(31)]
    quiet = await _attempt(url, quiet_ip)

    assert statuses[:30] == ["invalid_token"] * 30
    assert statuses[30] == "rate_limited"
    assert quiet == "invalid_token"


async def _attempt(url: str, local_ip: str) -> str:
    """Connect from `local_ip` with a bad token; return the error code."""
    async with websockets.connect(url, local_addr=(local_ip, 0)) as ws:
        # A rejected attempt gets its error and the close before it can send.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))
        return str(json.loads(await ws.recv())["code"])


async def test_flood_costs_flooder_not_neighbour(clients: Clients) -> None:
    """While one client floods, another's pings still get prompt pongs."""
    flooder = await clients.connect("alice", "us-east")
    polite = await clients.connect("bob", "us-east")
    frames = [json.dumps({"type": "sync", "padding": "x" * 500})] * 2000

    async def flood() -> None:
        for frame in frames:
            await flooder.send_raw(frame)

    task = asyncio.create_task(flood())
    worst_s = 0.0
    try:
        for _ in range(10):
            started = time.monotonic()
            await polite.send_raw('{"type": "ping"}')
            await polite.wait_for(lambda e: isinstance(e, PongEvent), timeout_s=5)
            worst_s = max(worst_s, time.monotonic() - started)
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
    # NOTE: a loose bound for a shared 2-core machine; docs/benchmarks.md has
    # measured latencies.
    assert worst_s < 1.0
