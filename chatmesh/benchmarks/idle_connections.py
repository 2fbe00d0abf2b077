"""Measure what idle client connections cost one edge process.

    python -m chatmesh.benchmarks.idle_connections --transport ws --count 10000
    python -m chatmesh.benchmarks.idle_connections --transport longpoll --count 10000

The benchmark starts a mesh with one region and one edge (or uses a running
edge given by `--edge-url`, `--edge-pid` and `--run-dir`). It opens
`--count` idle clients, each a distinct user: authenticated WebSockets that
send nothing after `auth`, or HTTP sessions that long-poll `/v1/events` and
poll again whenever a poll returns. Once the edge's `/healthz` counts them
all, it reports the edge's resident memory (VmRSS in /proc/PID/status)
before and after, and the edge's CPU time over `--hold-s` seconds of idling.

Every connection takes a file descriptor in this process and one in the
edge. The benchmark raises its soft RLIMIT_NOFILE to the hard limit before
it starts the mesh, so the edge inherits the raised limit too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import websockets

from topology.launcher import Mesh, RunLayout, dev_token_signer
from topology.model import Topology, parse_topology, unthrottled_rates

OPEN_CONCURRENCY = 100
# Descriptors kept free for the mesh's NATS links, logs and the like.
SPARE_DESCRIPTORS = 200
SETTLE_S = 3.0
COUNT_TIMEOUT_S = 120.0
EDGE_NAME = "bench-1"
# The edge's Retry-After on 503.
RETRY_PAUSE_S = 2.0


@dataclass(frozen=True)
class IdleResult:
    """One run; memory in MiB or KiB and CPU in percent of one core."""

    transport: str
    requested: int
    held: int
    open_seconds: float
    hold_seconds: float
    rss_before_mib: float
    rss_after_mib: float
    rss_per_connection_kib: float
    edge_cpu_idle_percent: float
    polls_returned_during_hold: int
    poll_failures: dict[str, int]
    failure_samples: dict[str, str]
    nofile_soft: int
    nofile_hard: int
    edge_nofile: str
    # 1-minute load average before opening and after the hold. Other
    # processes on the machine distort the figures when it is high.
    load_before: float
    load_after: float
    python: str
    cpus: int | None
    machine: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Open idle connections against one edge and report its cost."
    )

    parser.add_argument("--transport", choices=("ws", "longpoll"), required=True)
    parser.add_argument(
        "--count", type=int, required=True, help="idle connections to open"
    )
    parser.add_argument(
        "--hold-s",
        type=float,
        default=20.0,
        help="seconds of idling over which the edge's CPU time is measured",
    )
    parser.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="wait_s of each long poll, in seconds (the edge allows at most 30)",
    )

    parser.add_argument("--edge-url", help="http://HOST:PORT of a running edge")
    parser.add_argument("--edge-pid", type=int, help="process id of that edge")
    parser.add_argument(
        "--run-dir", type=Path, help="run directory of that edge's mesh (token keys)"
    )
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="keep the mesh's configs and logs here (default: a temporary directory)",
    )

    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    given = [args.edge_url, args.edge_pid, args.run_dir]
    if any(given) and not all(given):
        parser.error("--edge-url, --edge-pid and --run-dir go together")
    return args


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def bench_topology() -> Topology:
    return parse_topology(
        {
            "name": "bench-idle",
            "hub": {"nodes": [{"name": "hub-1"}]},
            "regions": [{"name": "bench", "edges": [{"name": EDGE_NAME}]}],
            "limits": unthrottled_rates(),
        }
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS line in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: field 14 (utime) and 15 (stime) of proc(5).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def open_file_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft}/{hard}"
    return "unknown"


async def edge_connections(http: httpx.AsyncClient) -> int:
    return int((await http.get("/healthz")).json()["connections"])


async def wait_for_count(http: httpx.AsyncClient, count: int) -> int:
    deadline = time.monotonic() + COUNT_TIMEOUT_S
    held = await edge_connections(http)
    while held < count and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        held = await edge_connections(http)
    return held


class IdleClients:
    """The idle connections of one run, and how to open and close them."""

    def __init__(
        self, base_url: str, sign: Callable[[str], str], wait_s: float
    ) -> None:
        self.base_url = base_url
        self._sign = sign
        self._wait_s = wait_s
        self._sockets: list[websockets.ClientConnection] = []
        self._pollers: list[asyncio.Task[None]] = []
        self.polls_returned = 0
        # Failed polls by HTTP status or exception name, over the whole run.
        self.poll_failures: Counter[str] = Counter()
        # The first response body of each failing status.
        self.failure_samples: dict[str, str] = {}

    def token(self, index: int) -> str:
        return self._sign(f"idle-{index}")

    async def open_websocket(self, index: int) -> None:
        url = self.base_url.replace("http://", "ws://") + "/v1/ws"
        ws = await websockets.connect(url, open_timeout=60)
        await ws.send(json.dumps({"type": "auth", "token": self.token(index)}))
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"the edge rejected WebSocket {index}: {hello}")
        self._sockets.append(ws)

    async def open_long_poll(self, index: int) -> None:
        parts = urlsplit(self.base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        token = self.token(index)
        status, body = await _http_request(
            reader, writer, "POST", "/v1/sessions", token
        )
        if status != 201:
            raise RuntimeError(f"the edge rejected session {index}: {status} {body!r}")
        session = json.loads(body)["connection"]
        path = f"/v1/events?wait_s={self._wait_s:g}&session={session}"
        self._pollers.append(
            asyncio.create_task(self._poll_forever(reader, writer, path, token))
        )

    async def _poll_forever(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        token: str,
    ) -> None:
        """Poll until cancelled; retry after a 503, stop after any other failure."""
        # Cursors are not sent: no user of the run has any conversation.
        try:
            while True:
                try:
                    status, body = await _http_request(
                        reader, writer, "GET", path, token
                    )
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self.poll_failures[type(exc).__name__] += 1
                    return
                if status == 200:
                    self.polls_returned += 1
                    continue
                self.poll_failures[str(status)] += 1
                if str(status) not in self.failure_samples:
                    self.failure_samples[str(status)] = body.decode(errors="replace")
                if status != 503:
                    return
                await asyncio.sleep(RETRY_PAUSE_S)
        finally:
            writer.close()

    async def close(self) -> None:
        for task in self._pollers:
            task.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        await asyncio.gather(
            *(ws.close() for ws in self._sockets), return_exceptions=True
        )


async def _http_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    token: str,
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request on a kept-alive connection; return status and body."""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def open_all(count: int, open_one: Callable[[int], Awaitable[None]]) -> float:
    """Open `count` clients, `OPEN_CONCURRENCY` at a time; return the seconds taken."""
    started = time.monotonic()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    reported = 0

    async def guarded(index: int) -> None:
        nonlocal reported
        async with gate:
            await open_one(index)
        reported += 1
        if reported % 1000 == 0:
            print(f"  opened {reported}/{count}", file=sys.stderr, flush=True)

    await asyncio.gather(*(guarded(i) for i in range(count)))
    return time.monotonic() - started


async def measure(
    args: argparse.Namespace, base_url: str, pid: int, sign: Callable[[str], str]
) -> IdleResult:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients = IdleClients(base_url, sign, args.wait_s)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        await asyncio.sleep(SETTLE_S)
        before_kib = rss_kib(pid)
        load_before = os.getloadavg()[0]
        opener = (
            clients.open_websocket if args.transport == "ws" else clients.open_long_poll
        )
        try:
            open_seconds = await open_all(args.count, opener)
            held = await wait_for_count(http, args.count)
            await asyncio.sleep(SETTLE_S)
            after_kib = rss_kib(pid)
            polls_before = clients.polls_returned
            cpu_before = cpu_seconds(pid)
            await asyncio.sleep(args.hold_s)
            cpu_used = cpu_seconds(pid) - cpu_before
            polls = clients.polls_returned - polls_before
            held = min(held, await edge_connections(http))
            load_after = os.getloadavg()[0]
        finally:
            await clients.close()
    return IdleResult(
        transport=args.transport,
        requested=args.count,
        held=held,
        open_seconds=round(open_seconds, 1),
        hold_seconds=args.hold_s,
        rss_before_mib=round(before_kib / 1024, 1),
        rss_after_mib=round(after_kib / 1024, 1),
        rss_per_connection_kib=round((after_kib - before_kib) / max(held, 1), 1),
        edge_cpu_idle_percent=round(100 * cpu_used / args.hold_s, 2),
        polls_returned_during_hold=polls,
        poll_failures=dict(clients.poll_failures),
        failure_samples=clients.failure_samples,
        nofile_soft=soft,
        nofile_hard=hard,
        edge_nofile=open_file_limit(pid),
        load_before=round(load_before, 2),
        load_after=round(load_after, 2),
        python=platform.python_version(),
        cpus=os.cpu_count(),
        machine=platform.machine(),
    )


async def run(args: argparse.Namespace) -> IdleResult:
    if args.edge_url:
        layout = RunLayout(args.run_dir)
        audience = json.loads(layout.topology.read_text())["name"]
        sign = dev_token_signer(layout, audience)
        return await measure(args, args.edge_url.rstrip("/"), args.edge_pid, sign)
    if args.run_dir is not None:
        return await run_mesh(args, args.run_dir)
    with tempfile.TemporaryDirectory(prefix="chatmesh-idle-") as run_dir:
        return await run_mesh(args, Path(run_dir))


async def run_mesh(args: argparse.Namespace, run_dir: Path) -> IdleResult:
    """Start the one-edge mesh in `run_dir`, measure, and stop it."""
    mesh = Mesh(bench_topology(), run_dir)
    try:
        await mesh.start()
        edge = mesh.topology.regions[0].edges[0]
        pid = mesh.processes[f"edge-{EDGE_NAME}"].pid
        assert pid is not None
        sign = dev_token_signer(mesh.layout, mesh.topology.name)
        return await measure(args, f"http://{edge.host}:{edge.port}", pid, sign)
    finally:
        mesh.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    soft, hard = raise_descriptor_limit()
    needed = args.count + SPARE_DESCRIPTORS
    if needed > soft:
        sys.exit(
            f"--count {args.count} needs about {needed} file descriptors, but the "
            f"limit is {soft} (hard {hard}); raise the hard limit (ulimit -Hn) "
            "or lower --count"
        )
    result = asyncio.run(run(args))
    text = json.dumps(asdict(result), indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
