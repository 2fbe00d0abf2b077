"""A TCP proxy on the link between each region's leaf node and the hub.

The launcher runs it as the `links` process when the topology sets
`links.proxy`. Each region has one link, with one listening port per hub
node that forwards to that node's leaf port. An HTTP API on loopback cuts,
heals and slows a link:

    GET  /links                                  every link's state
    POST /links/{region}/cut?mode=blackhole      or mode=reset
    POST /links/{region}/heal
    POST /links/{region}/latency?ms=50&jitter_ms=10

`blackhole` stalls the link's open connections in both directions, as a
silent network partition does: bytes wait in the proxy, then in the kernel's
socket buffers, until the link heals or an end gives up on the connection.
`reset` closes the link's connections at once. In both modes the proxy
closes new connections on the link as soon as it accepts them, until the
link heals. Latency is added to each direction, so a round trip gains twice
`ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Literal

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from topology.model import Topology

log = structlog.get_logger(__name__)

CHUNK_BYTES = 64 * 1024
# Chunks read ahead per direction; a stalled link stops reading beyond this,
# so the sender meets TCP backpressure as it would on a real link.
QUEUE_CHUNKS = 64
UPSTREAM_CONNECT_TIMEOUT_S = 2.0
MAX_LATENCY_MS = 60_000

LinkMode = Literal["up", "blackhole", "reset"]
CUT_MODES = ("blackhole", "reset")


@dataclass(frozen=True)
class LinkRoute:
    """One listening port of a link and the hub node it forwards to."""

    hub_node: str
    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int


class Link:
    """A region's link to the hub: its routes, fault state and open connections."""

    def __init__(self, region: str, routes: list[LinkRoute]) -> None:
        self.region = region
        self.routes = routes
        self.mode: LinkMode = "up"
        self.latency_s = 0.0
        self.jitter_s = 0.0
        # Set while bytes may flow; cleared while the link is cut.
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.connections_accepted = 0
        self.connections_refused = 0
        self._pipes: set[Pipe] = set()

    def cut(self, mode: LinkMode) -> None:
        self.mode = mode
        self.flowing.clear()
        if mode == "reset":
            for pipe in list(self._pipes):
                pipe.abort()
        log.info("link.cut", region=self.region, mode=mode, open=len(self._pipes))

    def heal(self) -> None:
        self.mode = "up"
        self.flowing.set()
        log.info("link.healed", region=self.region, open=len(self._pipes))

    def set_latency(self, latency_ms: float, jitter_ms: float) -> None:
        self.latency_s = latency_ms / 1000
        self.jitter_s = jitter_ms / 1000
        log.info(
            "link.latency_set",
            region=self.region,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
        )

    def delay_s(self) -> float:
        """Return the delay of one chunk: the latency plus a random jitter."""
        return self.latency_s + random.uniform(0.0, self.jitter_s)

    def status(self) -> dict[str, object]:
        return {
            "region": self.region,
            "mode": self.mode,
            "latency_ms": round(self.latency_s * 1000, 3),
            "jitter_ms": round(self.jitter_s * 1000, 3),
            "open_connections": len(self._pipes),
            "connections_accepted": self.connections_accepted,
            "connections_refused": self.connections_refused,
            "routes": [
                {
                    "hub_node": r.hub_node,
                    "listen": f"{r.listen_host}:{r.listen_port}",
                    "upstream": f"{r.upstream_host}:{r.upstream_port}",
                }
                for r in self.routes
            ],
        }

    async def handle(
        self,
        route: LinkRoute,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Serve one accepted connection until either end closes it."""
        if self.mode != "up":
            self.connections_refused += 1
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(route.upstream_host, route.upstream_port),
                UPSTREAM_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            log.info(
                "link.upstream_failed",
                region=self.region,
                hub_node=route.hub_node,
                error=repr(exc),
            )
            writer.transport.abort()
            return
        self.connections_accepted += 1
        pipe = Pipe(self, (reader, writer), upstream)
        self._pipes.add(pipe)
        try:
            await pipe.run()
        finally:
            self._pipes.discard(pipe)


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pipe:
    """One proxied connection: a relay in each direction, gated by its link."""

    def __init__(self, link: Link, downstream: Stream, upstream: Stream) -> None:
        self._link = link
        self._downstream = downstream
        self._upstream = upstream
        self._relays: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        (down_reader, down_writer), (up_reader, up_writer) = (
            self._downstream,
            self._upstream,
        )
        self._relays = [
            asyncio.create_task(self._relay(down_reader, up_writer)),
            asyncio.create_task(self._relay(up_reader, down_writer)),
        ]
        try:
            await asyncio.wait(self._relays, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.abort()
            for relay in self._relays:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await relay

    def abort(self) -> None:
        """Stop both relays and close both ends at once, without flushing."""
        for relay in self._relays:
            relay.cancel()
        self._downstream[1].transport.abort()
        self._upstream[1].transport.abort()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy bytes from `reader` to `writer`, held while the link is cut."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_ahead() -> None:
            chunk = b"x"
            while chunk:
                try:
                    chunk = await reader.read(CHUNK_BYTES)
                except OSError:
                    chunk = b""
                # An empty chunk is the end of the stream; it keeps its place.
                await queue.put((loop.time() + self._link.delay_s(), chunk))

        reading = asyncio.create_task(read_ahead())
        try:
            while True:
                due, chunk = await queue.get()
                await self._link.flowing.wait()
                wait_s = due - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if not chunk:
                    return
                writer.write(chunk)
                await writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def links_of(topology: Topology) -> dict[str, Link]:
    """Build the link of every region from a topology whose ports are resolved."""
    host = topology.links.host
    links: dict[str, Link] = {}
    for region in topology.regions:
        ports = region.leaf.hub_link_ports
        if len(ports) != len(topology.hub.nodes):
            raise ValueError(
                f"region {region.name!r} has {len(ports)} hub link port(s) for "
                f"{len(topology.hub.nodes)} hub node(s); resolve the topology's "
                "ports first (topology.launcher.resolve_ports)"
            )
        routes = [
            LinkRoute(node.name, host, port, node.host, node.leaf_port)
            for node, port in zip(topology.hub.nodes, ports, strict=True)
        ]
        links[region.name] = Link(region.name, routes)
    return links


def create_control_app(links: dict[str, Link]) -> Starlette:
    """Build the HTTP API that reads and changes the links' fault state."""

    def find(request: Request) -> Link | JSONResponse:
        region = request.path_params["region"]
        link = links.get(region)
        if link is None:
            known = ", ".join(links)
            return _error(404, f"no link for region {region!r}; links: {known}")
        return link

    async def list_links(request: Request) -> JSONResponse:
        return JSONResponse({"links": [link.status() for link in links.values()]})

    async def cut(request: Request) -> JSONResponse:
        link = find(request)
        if isinstance(link, JSONResponse):
            return link
        mode = request.query_params.get("mode", "blackhole")
        if mode not in CUT_MODES:
            return _error(400, f"invalid mode {mode!r}; use blackhole or reset")
        link.cut("blackhole" if mode == "blackhole" else "reset")
        return JSONResponse(link.status())

    async def heal(request: Request) -> JSONResponse:
        link = find(request)
        if isinstance(link, JSONResponse):
            return link
        link.heal()
        return JSONResponse(link.status())

    async def latency(request: Request) -> JSONResponse:
        link = find(request)
        if isinstance(link, JSONResponse):
            return link
        try:
            latency_ms = float(request.query_params.get("ms", "0"))
            jitter_ms = float(request.query_params.get("jitter_ms", "0"))
        except ValueError:
            return _error(400, "ms and jitter_ms must be numbers of milliseconds")
        if not (0 <= latency_ms <= MAX_LATENCY_MS and 0 <= jitter_ms <= MAX_LATENCY_MS):
            return _error(
                400,
                f"ms and jitter_ms must be between 0 and {MAX_LATENCY_MS}; "
                f"got ms={latency_ms}, jitter_ms={jitter_ms}",
            )
        link.set_latency(latency_ms, jitter_ms)
        return JSONResponse(link.status())

    routes = [
        Route("/links", list_links),
        Route("/links/{region}/cut", cut, methods=["POST"]),
        Route("/links/{region}/heal", heal, methods=["POST"]),
        Route("/links/{region}/latency", latency, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def run_links(topology: Topology) -> None:
    """Serve every link and the control API until SIGINT or SIGTERM."""
    asyncio.run(_serve(topology))


async def _serve(topology: Topology) -> None:
    links = links_of(topology)
    servers: list[asyncio.Server] = []
    for link in links.values():
        for route in link.routes:
            servers.append(await listen(link, route))
    log.info("links.started", links=len(links), listeners=len(servers))
    config = uvicorn.Config(
        create_control_app(links),
        host=topology.links.host,
        port=topology.links.control_port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        for server in servers:
            server.close()
        for link in links.values():
            link.cut("reset")
        log.info("links.stopped")


async def listen(link: Link, route: LinkRoute) -> asyncio.Server:
    """Accept connections on `route` and proxy them through `link`."""

    async def accepted(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await link.handle(route, reader, writer)

    return await asyncio.start_server(accepted, route.listen_host, route.listen_port)
