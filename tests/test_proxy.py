"""The link proxy: forwarding, cuts, heals and latency, over real TCP sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from topology.launcher import free_port
from topology.proxy import Link, LinkRoute, listen

HOST = "127.0.0.1"
READ_TIMEOUT_S = 2.0
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    """A link whose one route forwards to an echo server."""
    upstream = await asyncio.start_server(echo, HOST, 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    route = LinkRoute("hub-1", HOST, free_port(), HOST, upstream_port)
    proxied = Link("eu-west", [route])
    server = await listen(proxied, route)
    try:
        yield proxied
    finally:
        proxied.cut("reset")
        server.close()
        upstream.close()


async def connect(link: Link) -> Connection:
    route = link.routes[0]
    return await asyncio.open_connection(route.listen_host, route.listen_port)


async def round_trip(connection: Connection, data: bytes) -> bytes:
    reader, writer = connection
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), READ_TIMEOUT_S)


async def test_forwards_both_ways(link: Link) -> None:
    connection = await connect(link)

    assert await round_trip(connection, b"ping") == b"ping"
    assert link.status()["open_connections"] == 1


async def test_blackhole_stalls_then_heal_resumes(link: Link) -> None:
    connection = await connect(link)
    await round_trip(connection, b"before")

    link.cut("blackhole")
    reader, writer = connection
    writer.write(b"during")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(6), 0.5)
    link.heal()

    assert await asyncio.wait_for(reader.readexactly(6), READ_TIMEOUT_S) == b"during"


async def test_cut_link_refuses_new_connections(link: Link) -> None:
    link.cut("blackhole")
    reader, _ = await connect(link)

    assert await asyncio.wait_for(reader.read(10), READ_TIMEOUT_S) == b""
    assert link.connections_refused == 1

    link.heal()
    assert await round_trip(await connect(link), b"again") == b"again"


async def test_reset_closes_open_connections(link: Link) -> None:
    connection = await connect(link)
    reader, _ = connection
    await round_trip(connection, b"x")

    link.cut("reset")

    assert await asyncio.wait_for(reader.read(10), READ_TIMEOUT_S) == b""
    await asyncio.sleep(0.05)
    assert link.status()["open_connections"] == 0


async def test_latency_delays_each_direction(link: Link) -> None:
    connection = await connect(link)
    await round_trip(connection, b"warm")
    link.set_latency(100, 0)

    started = time.monotonic()
    await round_trip(connection, b"slow")
    elapsed_s = time.monotonic() - started

    assert elapsed_s >= 0.2
    assert elapsed_s < 1.5
