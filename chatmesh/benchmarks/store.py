"""Measure message store write throughput and "latest 50" read latency.

    python -m chatmesh.benchmarks.store --backend sqlite --messages 20000
    python -m chatmesh.benchmarks.store --backend scylla --messages 20000

The write phase appends `--messages` messages round-robin over
`--conversations` 1-1 conversations. Each conversation is written by one task
in sequence order, as the sequencer does, and `--concurrency` tasks write
different conversations at once. The read phase then fetches the latest
`--read-limit` messages of random conversations `--reads` times, with
`--read-concurrency` reads in flight.

With `--backend scylla` and no `--contact-point`, the benchmark starts a
throwaway single Cassandra 5.0 node with `topology.cql_server` and stops it
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from core.ids import ConversationId, UserId, direct_conversation
from core.schema import StoredMessage
from core.store.base import MessageStore
from core.store.scylla import ScyllaStore
from core.store.sqlite import SqliteStore

PROGRESS_INTERVAL_S = 2.0
BENCH_DATACENTER = "eu-west"


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run; times in seconds unless the name says ms."""

    backend: str
    messages: int
    conversations: int
    concurrency: int
    read_concurrency: int
    content_bytes: int
    write_seconds: float
    writes_per_s: float
    reads: int
    read_limit: int
    read_p50_ms: float
    read_p99_ms: float
    read_max_ms: float
    python: str
    cpus: int | None
    machine: str
    # 1-minute load average before the write phase and after the read phase.
    # Other processes on the machine distort the figures when it is high.
    load_before: float
    load_after: float


POSITIVE_OPTIONS = (
    "messages",
    "conversations",
    "concurrency",
    "read_concurrency",
    "reads",
    "read_limit",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chatmesh.benchmarks.store",
        description="Measure message store writes/s and latest-N read latency.",
    )
    parser.add_argument("--backend", choices=("sqlite", "scylla"), required=True)
    add_connection_options(parser)
    add_workload_options(parser)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args(argv)
    for name in POSITIVE_OPTIONS:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--contact-point",
        action="append",
        default=[],
        help="CQL node address (repeatable). Without it a local node is started",
    )
    parser.add_argument("--port", type=int, default=9042, help="CQL native port")
    parser.add_argument(
        "--datacenter",
        default=BENCH_DATACENTER,
        help="local datacenter of the CQL cluster, which gets one replica",
    )
    parser.add_argument("--keyspace", help="CQL keyspace (default: a new one)")
    parser.add_argument(
        "--sqlite-path", type=Path, help="SQLite file (default: a temporary file)"
    )


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--messages", type=int, required=True, help="number of messages to write"
    )
    parser.add_argument(
        "--conversations", type=int, default=1000, help="number of conversations"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="number of conversations written at once",
    )
    parser.add_argument(
        "--read-concurrency",
        type=int,
        default=1,
        help="reads in flight at once. 1 measures latency without queueing",
    )
    parser.add_argument(
        "--content-bytes", type=int, default=200, help="message content size in bytes"
    )
    parser.add_argument(
        "--reads", type=int, default=2000, help="number of latest-N reads to time"
    )
    parser.add_argument(
        "--read-limit", type=int, default=50, help="N of the latest-N reads"
    )


def plan_writes(
    messages: int, conversations: int, concurrency: int
) -> list[list[tuple[ConversationId, int]]]:
    """Split messages into one (conversation, seq) list per writer task.

    Message i goes to conversation i % conversations with the next seq of
    that conversation. Conversation c belongs to task c % concurrency, so
    each conversation is written by one task in seq order.
    """
    ids = [conversation_id(c) for c in range(conversations)]
    plans: list[list[tuple[ConversationId, int]]] = [[] for _ in range(concurrency)]
    for i in range(messages):
        c = i % conversations
        plans[c % concurrency].append((ids[c], i // conversations + 1))
    return [plan for plan in plans if plan]


def conversation_id(index: int) -> ConversationId:
    return direct_conversation(UserId(f"bench_a{index}"), UserId(f"bench_b{index}"))


def members_of(conversation: ConversationId) -> list[UserId]:
    _, low, high = conversation.split(":")
    return [UserId(low), UserId(high)]


class Progress:
    """Print a progress line at most every `PROGRESS_INTERVAL_S` seconds."""

    def __init__(self, phase: str, total: int) -> None:
        self.phase = phase
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self._last_print = self.started

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self._last_print >= PROGRESS_INTERVAL_S or self.done == self.total:
            self._last_print = now
            rate = self.done / max(now - self.started, 1e-9)
            print(
                f"  {self.phase}: {self.done}/{self.total} ({rate:,.0f}/s)", flush=True
            )


async def write_phase(
    store: MessageStore, plans: list[list[tuple[ConversationId, int]]], content: str
) -> float:
    """Append every planned message and return the elapsed seconds."""
    progress = Progress("write", sum(len(plan) for plan in plans))
    # SqliteStore runs each append as a transaction on one shared connection,
    # so concurrent appends would interleave their transactions.
    lock = asyncio.Lock() if isinstance(store, SqliteStore) else None

    async def writer(plan: list[tuple[ConversationId, int]]) -> None:
        for conversation, seq in plan:
            message = make_message(conversation, seq, content)
            if lock is None:
                await store.append_message(message, members_of(conversation))
            else:
                async with lock:
                    await store.append_message(message, members_of(conversation))
            progress.step()

    started = time.perf_counter()
    await asyncio.gather(*(writer(plan) for plan in plans))
    return time.perf_counter() - started


def make_message(conversation: ConversationId, seq: int, content: str) -> StoredMessage:
    sender = members_of(conversation)[seq % 2]
    return StoredMessage(
        message_id=random.getrandbits(62),
        conversation=conversation,
        seq=seq,
        sender=sender,
        recipient=members_of(conversation)[(seq + 1) % 2],
        content=content,
        timestamp_ms=int(time.time() * 1000),
        client_msg_id=f"bench-{uuid.uuid4().hex}",
    )


async def read_phase(
    store: MessageStore, conversations: int, reads: int, limit: int, concurrency: int
) -> list[float]:
    """Time `reads` latest-`limit` reads of random conversations; return ms each."""
    progress = Progress("read", reads)
    latencies_ms: list[float] = []
    remaining = iter(range(reads))

    async def reader() -> None:
        for _ in remaining:
            conversation = conversation_id(random.randrange(conversations))
            started = time.perf_counter()
            await store.fetch_latest(conversation, limit)
            latencies_ms.append((time.perf_counter() - started) * 1000)
            progress.step()

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    return latencies_ms


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of `values` (fraction in 0..1)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def run(
    store: MessageStore, args: argparse.Namespace, backend: str
) -> BenchResult:
    await store.ensure_schema()
    load_before = os.getloadavg()[0]
    content = "x" * args.content_bytes
    plans = plan_writes(args.messages, args.conversations, args.concurrency)
    print(
        f"writing {args.messages} messages to {args.conversations} conversations "
        f"with {len(plans)} writers",
        flush=True,
    )
    write_s = await write_phase(store, plans, content)
    print(
        f"reading the latest {args.read_limit} messages {args.reads} times", flush=True
    )
    latencies = await read_phase(
        store, args.conversations, args.reads, args.read_limit, args.read_concurrency
    )
    return BenchResult(
        backend=backend,
        messages=args.messages,
        conversations=args.conversations,
        concurrency=args.concurrency,
        read_concurrency=args.read_concurrency,
        content_bytes=args.content_bytes,
        write_seconds=round(write_s, 3),
        writes_per_s=round(args.messages / write_s, 1),
        reads=args.reads,
        read_limit=args.read_limit,
        read_p50_ms=round(percentile(latencies, 0.50), 3),
        read_p99_ms=round(percentile(latencies, 0.99), 3),
        read_max_ms=round(max(latencies), 3),
        python=platform.python_version(),
        cpus=os.cpu_count(),
        machine=platform.platform(),
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )


def print_table(result: BenchResult) -> None:
    rows = [
        ("backend", result.backend),
        ("messages", f"{result.messages}"),
        ("conversations", f"{result.conversations}"),
        ("writers", f"{result.concurrency}"),
        ("readers", f"{result.read_concurrency}"),
        ("content bytes", f"{result.content_bytes}"),
        ("writes/s", f"{result.writes_per_s:,.0f}"),
        (f"read latest {result.read_limit} p50 ms", f"{result.read_p50_ms:.2f}"),
        (f"read latest {result.read_limit} p99 ms", f"{result.read_p99_ms:.2f}"),
        (f"read latest {result.read_limit} max ms", f"{result.read_max_ms:.2f}"),
        ("load average before/after", f"{result.load_before}/{result.load_after}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12}")


@contextmanager
def local_cql_node(work_dir: Path) -> Iterator[tuple[list[str], int]]:
    """Start a throwaway Cassandra node; yield its contact points and port."""
    from topology.cql_server import CqlNodeSpec, start_cluster

    native_port = free_port()
    storage_port = free_port(exclude=native_port)
    spec = CqlNodeSpec(
        name="bench",
        address="127.0.0.1",
        native_port=native_port,
        storage_port=storage_port,
        datacenter=BENCH_DATACENTER,
        token=0,
        work_dir=work_dir,
        cluster_name="chatmesh-bench",
        unsafe_system=True,
    )
    print(f"starting a local Cassandra node on 127.0.0.1:{native_port}", flush=True)
    nodes = start_cluster([spec])
    try:
        yield [spec.address], native_port
    finally:
        for node in nodes:
            node.stop()


def free_port(exclude: int = 0) -> int:
    """Return a free loopback TCP port (another process may still take it)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port != exclude:
            return port


async def with_store(
    store: MessageStore, body: Callable[[MessageStore], Awaitable[BenchResult]]
) -> BenchResult:
    try:
        return await body(store)
    finally:
        await store.close()


def bench_sqlite(args: argparse.Namespace, work_dir: Path) -> BenchResult:
    path = args.sqlite_path or work_dir / "bench.db"
    store = SqliteStore(path)
    return asyncio.run(with_store(store, lambda s: run(s, args, "sqlite")))


def bench_scylla(args: argparse.Namespace, work_dir: Path) -> BenchResult:
    keyspace = args.keyspace or f"bench_{uuid.uuid4().hex[:12]}"
    if args.contact_point:
        return _bench_scylla_at(args, args.contact_point, args.port, keyspace)
    with local_cql_node(work_dir / "cql") as (contact_points, port):
        return _bench_scylla_at(args, contact_points, port, keyspace)


def _bench_scylla_at(
    args: argparse.Namespace, contact_points: list[str], port: int, keyspace: str
) -> BenchResult:
    store = ScyllaStore(
        contact_points=contact_points,
        port=port,
        keyspace=keyspace,
        local_datacenter=args.datacenter,
        replication={args.datacenter: 1},
    )
    return asyncio.run(with_store(store, lambda s: run(s, args, "scylla")))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chatmesh-bench-") as tmp:
        work_dir = Path(tmp)
        if args.backend == "sqlite":
            result = bench_sqlite(args, work_dir)
        else:
            result = bench_scylla(args, work_dir)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
