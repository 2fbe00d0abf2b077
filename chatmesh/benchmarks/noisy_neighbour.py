"""Measure polite clients' latency on an edge, with and without a flooding client.

    python -m chatmesh.benchmarks.noisy_neighbour --seconds 10 --polite 4

The benchmark starts a two-region mesh twice: once with the default rate
limits and once with limits too high to matter. On each mesh it runs two
phases of `--seconds` each. In the quiet phase, `--polite` clients on
`eu-west-1` each send one message every `--interval-ms` to a user of
`us-east`. In the flood phase, one more client on the same edge sends
`send` frames as fast as the edge reads them, up to `--flood-max-frames`.

For each polite message it records the time from sending the frame to the
`accepted` event (the region's JetStream stored it) and to the `committed`
event (the core sequenced and stored it, and the delivery came back). A
commit not seen within `COMMIT_WAIT_S` counts as that long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import websockets

from chatmesh.client import ChatClient
from core.logs import configure_logging
from core.schema import CommittedEvent
from core.tokens import KeyStore, mint_token
from topology.launcher import Mesh
from topology.model import Topology, parse_topology

EDGE = "eu-west-1"
FLOODER = "flooder"
SINK = "sink"
# Limits far above what one machine can send: the "limits off" mesh.
UNLIMITED = {"per_s": 1e9, "burst": 1e9}
COMMIT_WAIT_S = 10.0


@dataclass(frozen=True)
class PhaseResult:
    """Latencies of the polite clients in one phase, in milliseconds."""

    limits: str
    phase: str
    polite_messages: int
    accepted_p50_ms: float
    accepted_p99_ms: float
    committed_p50_ms: float
    committed_p99_ms: float
    committed_max_ms: float
    flood_frames_sent: int
    # Flood messages the core had committed when the polite clients stopped.
    flood_messages_stored: int


def build_topology(name: str, polite: int, limits_on: bool) -> Topology:
    users = [f"polite-{i}" for i in range(polite)] + [FLOODER, SINK]
    raw: dict[str, Any] = {
        "name": name,
        "hub": {"nodes": [{"name": "hub-1"}]},
        "regions": [
            {"name": "eu-west", "edges": [{"name": EDGE}]},
            {"name": "us-east", "edges": [{"name": "us-east-1"}]},
        ],
        "dev_users": users,
    }
    if not limits_on:
        raw["limits"] = {
            key: UNLIMITED
            for key in (
                "messages_per_connection",
                "messages_per_user",
                "bytes_per_connection",
                "bytes_per_user",
            )
        }
    return parse_topology(raw)


class Flood:
    """One client sending `send` frames as fast as its edge reads them."""

    def __init__(self, url: str, token: str, max_frames: int) -> None:
        self._url = url
        self._token = token
        self._max_frames = max_frames
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        # The edge stops reading a rate-limited connection, so thousands of
        # frames wait in TCP buffers ahead of any keepalive ping: no pings.
        async with websockets.connect(
            self._url, max_size=2**20, ping_interval=None, close_timeout=1
        ) as ws:
            await ws.send(json.dumps({"type": "auth", "token": self._token}))
            await ws.recv()
            reader = asyncio.create_task(self._read(ws))
            try:
                await self._send_until(ws, stop)
            except websockets.ConnectionClosed:
                pass  # the edge may close a flooding connection; the flood ends
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                # A close handshake would wait behind megabytes of queued
                # frames; drop the connection at once instead.
                ws.transport.abort()

    async def _send_until(
        self, ws: websockets.ClientConnection, stop: asyncio.Event
    ) -> None:
        while not stop.is_set() and self.sent < self._max_frames:
            frame = {
                "type": "send",
                "id": uuid.uuid4().hex,
                "to": SINK,
                "content": "flood " * 20,
            }
            await ws.send(json.dumps(frame))
            self.sent += 1

    async def _read(self, ws: websockets.ClientConnection) -> None:
        # Replies are read and dropped, so the edge never finds this
        # client too slow and disconnects it.
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws:
                pass


async def polite_client(
    client: ChatClient, interval_s: float, stop: asyncio.Event
) -> tuple[list[float], list[float]]:
    """Send one message per interval until `stop`; return the two latency lists."""
    accepted_ms: list[float] = []
    committed_ms: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        reply = await client.send(SINK, "polite message", timeout_s=COMMIT_WAIT_S)
        accepted_ms.append((time.perf_counter() - started) * 1000)
        try:
            await client.wait_for(_committed(reply.id), timeout_s=COMMIT_WAIT_S)
        except TimeoutError:
            # Counted as a commit that took the whole wait.
            committed_ms.append(COMMIT_WAIT_S * 1000)
            continue
        committed_ms.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
    return accepted_ms, committed_ms


def _committed(ref: str) -> Callable[[object], bool]:
    def match(event: object) -> bool:
        return isinstance(event, CommittedEvent) and event.id == ref

    return match


async def run_phase(
    mesh: Mesh, args: argparse.Namespace, limits: str, flood: bool
) -> PhaseResult:
    """Measure the polite clients' latency for one phase, with or without a flood."""
    keys = KeyStore(mesh.layout.token_private_keys, mesh.layout.token_public_keys)
    key = keys.signing_key()
    url = mesh.edge_url(EDGE)
    clients = [
        ChatClient(url, mint_token(key, f"polite-{i}", mesh.topology.name))
        for i in range(args.polite)
    ]
    for client in clients:
        await client.connect()
        await client.sync()

    stop = asyncio.Event()
    flooder = Flood(
        url, mint_token(key, FLOODER, mesh.topology.name), args.flood_max_frames
    )
    flood_task = asyncio.create_task(flooder.run(stop)) if flood else None
    await asyncio.sleep(0.5 if flood else 0)  # let the flood build up
    tasks = [
        asyncio.create_task(polite_client(c, args.interval_ms / 1000, stop))
        for c in clients
    ]
    await asyncio.sleep(args.seconds)

    stop.set()
    results = await asyncio.gather(*tasks)
    flood_stored = _stored_by(mesh, FLOODER)
    if flood_task is not None:
        flood_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flood_task
    for client in clients:
        await client.close()

    accepted = [ms for pair in results for ms in pair[0]]
    committed = [ms for pair in results for ms in pair[1]]
    return PhaseResult(
        limits=limits,
        phase="flood" if flood else "quiet",
        polite_messages=len(committed),
        accepted_p50_ms=_percentile(accepted, 50),
        accepted_p99_ms=_percentile(accepted, 99),
        committed_p50_ms=_percentile(committed, 50),
        committed_p99_ms=_percentile(committed, 99),
        committed_max_ms=round(max(committed), 1),
        flood_frames_sent=flooder.sent,
        flood_messages_stored=flood_stored,
    )


def _stored_by(mesh: Mesh, sender: str) -> int:
    path = mesh.layout.data / mesh.topology.store.sqlite_path
    with sqlite3.connect(path) as db:
        query = "SELECT count(*) FROM messages WHERE sender = ?"
        return int(db.execute(query, (sender,)).fetchone()[0])


def _percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return round(values[0], 1) if values else 0.0
    return round(statistics.quantiles(values, n=100)[pct - 1], 1)


async def run_mesh(args: argparse.Namespace, limits_on: bool) -> list[PhaseResult]:
    label = "on" if limits_on else "off"
    topology = build_topology(f"noisy-{label}", args.polite, limits_on)
    with tempfile.TemporaryDirectory(prefix="chatmesh-noisy-") as temp_dir:
        run_dir = args.run_dir / label if args.run_dir else Path(temp_dir)
        mesh = Mesh(topology, run_dir)
        try:
            await mesh.start()
            quiet = await run_phase(mesh, args, label, flood=False)
            loud = await run_phase(mesh, args, label, flood=True)
        finally:
            mesh.stop()
    return [quiet, loud]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="Length of each phase, in seconds."
    )
    parser.add_argument(
        "--polite", type=int, default=4, help="Number of polite clients."
    )
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=200.0,
        help="Milliseconds between one polite client's sends.",
    )
    parser.add_argument(
        "--flood-max-frames",
        type=int,
        default=200_000,
        help="The flooding client stops after this many frames.",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="Keep each mesh's configs and logs here. Default: a deleted temp dir.",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.polite < 1 or args.flood_max_frames < 1:
        parser.error("--seconds, --polite and --flood-max-frames must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # stdout carries only the JSON result.
    configure_logging("WARNING")
    load_before = os.getloadavg()[0]
    results: list[PhaseResult] = []
    for limits_on in (True, False):
        results.extend(asyncio.run(run_mesh(args, limits_on)))
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps({"machine": machine, "phases": [asdict(r) for r in results]}))
    print(_table(results), file=sys.stderr)


def _table(results: list[PhaseResult]) -> str:
    lines = [
        "| limits | phase | polite msgs | accepted p50 / p99 ms | "
        "committed p50 / p99 / max ms | flood frames sent / stored |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.limits} | {r.phase} | {r.polite_messages} | "
            f"{r.accepted_p50_ms} / {r.accepted_p99_ms} | "
            f"{r.committed_p50_ms} / {r.committed_p99_ms} / {r.committed_max_ms} | "
            f"{r.flood_frames_sent} / {r.flood_messages_stored} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
