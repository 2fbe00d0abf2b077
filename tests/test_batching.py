"""Edge batching: accepted only after the batch is stored, and resends stored once."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js.api import PubAck

from chatmesh.client import ChatClient
from core import subjects
from core.metrics import EdgeMetrics
from core.natsconn import connect_nats
from core.schema import (
    AcceptedEvent,
    IngestBatch,
    IngestEnvelope,
    Origin,
    encode_ingest_batch,
)
from edge.batcher import IngestBatcher
from tests.conftest import small_topology, start_mesh, token_for
from topology.launcher import Mesh
from topology.model import Ingest, unthrottled_rates
from topology.render import leaf_client_url

LINGER_MS = 50.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class GatedPublish:
    """A stand-in for JetStream that acks only when the test opens the gate."""

    def __init__(self, error: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.calls: list[tuple[bytes, str]] = []
        self._error = error

    async def __call__(self, payload: bytes, batch_id: str) -> PubAck:
        self.calls.append((payload, batch_id))
        await self.gate.wait()
        if self._error is not None:
            raise self._error
        return PubAck(stream="INGEST_test", seq=len(self.calls))


def envelope(sender: str, client_id: str) -> bytes:
    return (
        IngestEnvelope(
            sender=sender,
            recipient="bob",
            client_msg_id=client_id,
            content="hi",
            accepted_at_ms=1,
            origin=Origin(region="eu-west", edge="edge-1", connection="c-1"),
        )
        .model_dump_json()
        .encode()
    )


async def test_batcher_waits_for_ack() -> None:
    publish = GatedPublish()
    settings = Ingest(batch_linger_ms=5.0)
    batcher = IngestBatcher("edge-1", publish, settings, EdgeMetrics())

    sends = [
        asyncio.create_task(batcher.submit(envelope(f"u{i}", "c1"))) for i in range(3)
    ]
    await asyncio.sleep(0.1)

    assert len(publish.calls) == 1
    assert not any(send.done() for send in sends)
    batch = IngestBatch.model_validate_json(publish.calls[0][0])
    assert [e.sender for e in batch.envelopes] == ["u0", "u1", "u2"]
    assert batch.batch_id == publish.calls[0][1]

    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(*sends), 2.0)


async def test_batcher_failure_reaches_every_sender() -> None:
    publish = GatedPublish(error=TimeoutError("no ack"))
    batcher = IngestBatcher("edge-1", publish, Ingest(), EdgeMetrics())
    sends = [
        asyncio.create_task(batcher.submit(envelope(f"u{i}", "c1"))) for i in range(2)
    ]
    publish.gate.set()

    results = await asyncio.gather(*sends, return_exceptions=True)

    assert all(isinstance(r, TimeoutError) for r in results)


async def test_batcher_flushes_full_batch_at_once() -> None:
    publish = GatedPublish()
    publish.gate.set()
    settings = Ingest(batch_max_messages=2, batch_linger_ms=100.0)
    batcher = IngestBatcher("edge-1", publish, settings, EdgeMetrics())

    await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(envelope(f"u{i}", "c1")) for i in range(4))),
        0.09,
    )

    sizes = [
        len(IngestBatch.model_validate_json(p).envelopes) for p, _ in publish.calls
    ]
    assert sizes == [2, 2]
    assert len({batch_id for _, batch_id in publish.calls}) == 2


async def test_batcher_grows_batch_while_slots_busy() -> None:
    publish = GatedPublish()
    settings = Ingest(batch_linger_ms=1.0, max_batches_in_flight=1)
    batcher = IngestBatcher("edge-1", publish, settings, EdgeMetrics())

    first = asyncio.create_task(batcher.submit(envelope("u0", "c1")))
    await asyncio.sleep(0.05)
    later = [
        asyncio.create_task(batcher.submit(envelope(f"u{i}", "c1"))) for i in (1, 2, 3)
    ]
    await asyncio.sleep(0.05)
    assert len(publish.calls) == 1
    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 2.0)

    senders = [
        [e.sender for e in IngestBatch.model_validate_json(p).envelopes]
        for p, _ in publish.calls
    ]
    assert senders == [["u0"], ["u1", "u2", "u3"]]


async def test_batcher_closes_in_flight_on_close() -> None:
    publish = GatedPublish()
    publish.gate.set()
    batcher = IngestBatcher(
        "edge-1", publish, Ingest(batch_linger_ms=50.0), EdgeMetrics()
    )
    send = asyncio.create_task(batcher.submit(envelope("u0", "c1")))
    await asyncio.sleep(0)

    await asyncio.wait_for(batcher.close(), 1.0)

    assert send.done()
    assert len(publish.calls) == 1


def test_encoded_batch_matches_schema() -> None:
    encoded = encode_ingest_batch("edge-1", "edge-1:x:1", [envelope("alice", "c9")])
    batch = IngestBatch.model_validate_json(encoded)
    assert batch.edge == "edge-1"
    assert batch.envelopes[0].client_msg_id == "c9"


# ---- against a real mesh ----------------------------------------------------


@pytest.fixture(scope="module")
def slow_batch_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A mesh whose edges hold each batch open for `LINGER_MS`."""
    topology = small_topology(
        "batch-mesh",
        ingest={"batch_linger_ms": LINGER_MS, "batch_max_messages": 64},
        limits=unthrottled_rates(),
    )
    run = start_mesh(topology, tmp_path_factory.mktemp("batch-mesh"))
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture
async def opened(slow_batch_mesh: Mesh) -> AsyncIterator[list[ChatClient]]:
    clients: list[ChatClient] = []
    yield clients
    for client in clients:
        await client.close()


async def connect(mesh: Mesh, user: str, clients: list[ChatClient]) -> ChatClient:
    url = mesh.edge_url(mesh.topology.get_region("eu-west").edges[0].name)
    client = ChatClient(url, token_for(mesh, user))
    await client.connect()
    clients.append(client)
    return client


async def last_leaf_batch(mesh: Mesh) -> IngestBatch:
    region = mesh.topology.get_region("eu-west")
    nc = await connect_nats(
        [leaf_client_url(mesh.topology, region)], "test-ops", mesh.ops_auth()
    )
    try:
        js = nc.jetstream(domain=region.name)
        stream = subjects.region_ingest_stream(region.name)
        info = await js.stream_info(stream)
        raw = await js.get_msg(stream, seq=info.state.last_seq)
        return IngestBatch.model_validate_json(raw.data or b"")
    finally:
        await nc.close()


async def test_accepted_only_after_leaf_stores_batch(
    slow_batch_mesh: Mesh, opened: list[ChatClient]
) -> None:
    alice = await connect(slow_batch_mesh, "alice", opened)
    carol = await connect(slow_batch_mesh, "carol", opened)
    await alice.send("bob", "warm up the recipient cache")
    await carol.send("bob", "warm up the recipient cache")
    leaf = slow_batch_mesh.processes["leaf-eu-west"]
    ids = [unique("a"), unique("c")]

    leaf.signal(signal.SIGSTOP)
    try:
        sends = [
            asyncio.create_task(alice.send("bob", "held", client_msg_id=ids[0])),
            asyncio.create_task(carol.send("bob", "held", client_msg_id=ids[1])),
        ]
        await asyncio.sleep(1.0)
        assert not any(send.done() for send in sends)
    finally:
        leaf.signal(signal.SIGCONT)
    accepted = await asyncio.wait_for(asyncio.gather(*sends), 10.0)

    assert [a.id for a in accepted] == ids
    batch = await last_leaf_batch(slow_batch_mesh)
    assert sorted(e.client_msg_id for e in batch.envelopes) == sorted(ids)
    assert {e.sender for e in batch.envelopes} == {"alice", "carol"}


async def test_resend_across_batches_stored_once(
    slow_batch_mesh: Mesh, opened: list[ChatClient]
) -> None:
    bob = await connect(slow_batch_mesh, "bob", opened)
    await bob.sync()
    client_id = unique("resend")
    region = slow_batch_mesh.topology.get_region("eu-west")
    once = envelope("alice", client_id)
    marker = envelope("alice", unique("marker"))

    nc = await connect_nats(
        [leaf_client_url(slow_batch_mesh.topology, region)],
        "test-ops",
        slow_batch_mesh.ops_auth(),
    )
    try:
        js = nc.jetstream(domain=region.name)
        subject = subjects.ingest_subject(region.name, "edge-1")
        # The same message in two batches, and twice within the second one.
        for number, envelopes in enumerate([[once], [once, once, marker]]):
            batch_id = f"edge-1:{client_id}:{number}"
            payload = encode_ingest_batch("edge-1", batch_id, envelopes)
            await js.publish(subject, payload, headers={"Nats-Msg-Id": batch_id})
    finally:
        await nc.close()

    await asyncio.sleep(2 * LINGER_MS / 1000 + 1.0)
    await bob.sync()
    stored = [m for m in bob.shown if m.client_msg_id == client_id]
    assert len(stored) == 1
    seqs = [m.seq for m in bob.shown if m.conversation == "dm:alice:bob"]
    assert seqs == sorted(set(seqs))


async def test_same_edge_resend_answered_as_duplicate(
    slow_batch_mesh: Mesh, opened: list[ChatClient]
) -> None:
    # Two devices of one user on one edge: the second send finds the first
    # still waiting in the open batch.
    phone = await connect(slow_batch_mesh, "alice", opened)
    laptop = await connect(slow_batch_mesh, "alice", opened)
    client_id = unique("twice")

    first, second = await asyncio.gather(
        phone.send("bob", "once", client_msg_id=client_id),
        laptop.send("bob", "once", client_msg_id=client_id),
    )
    third = await phone.send("bob", "once", client_msg_id=client_id)

    assert isinstance(first, AcceptedEvent)
    assert {first.duplicate, second.duplicate} == {False, True}
    assert third.duplicate is True
    batch = await last_leaf_batch(slow_batch_mesh)
    assert [e.client_msg_id for e in batch.envelopes].count(client_id) <= 1


def test_topology_rejects_oversized_batches(tmp_path: Path) -> None:
    from topology.model import TopologyError, parse_topology

    raw = small_topology().model_dump()
    raw["ingest"] = {"batch_max_bytes": 2 * 1024 * 1024}
    with pytest.raises(TopologyError, match="batch_max_bytes"):
        parse_topology(raw)


async def test_backlog_over_max_payload_is_routed(
    slow_batch_mesh: Mesh, opened: list[ChatClient]
) -> None:
    # 400 messages of 3 KB committed at once need several delivery batches:
    # one would exceed NATS's max_payload of 1 MiB.
    alice = await connect(slow_batch_mesh, "alice", opened)
    erin_url = slow_batch_mesh.edge_url(
        slow_batch_mesh.topology.get_region("us-east").edges[0].name
    )
    erin = ChatClient(erin_url, token_for(slow_batch_mesh, "erin"))
    await erin.connect()
    opened.append(erin)
    # The edge caches that erin exists, so the stopped core is not needed.
    await alice.send("erin", "warm up the recipient cache")
    await erin.wait_for_messages(1)
    await erin.sync()
    before = len(erin.shown)
    core = slow_batch_mesh.processes["core-0"]
    content = "x" * 3000

    core.signal(signal.SIGSTOP)
    try:
        await asyncio.gather(*(alice.send("erin", content) for _ in range(400)))
    finally:
        core.signal(signal.SIGCONT)
    shown = await erin.wait_for_messages(before + 400, timeout_s=60)

    assert len(shown) == before + 400
    seqs = [m.seq for m in shown if m.conversation == "dm:alice:erin"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
