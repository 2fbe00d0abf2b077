"""Property-based tests of the frame decoder and the edge's HTTP API, and a
burst of malformed frames against a real edge."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ContentTooLarge, MalformedFrame
from core.schema import CLIENT_FRAME_TYPES, SendFrame
from edge.frames import check_content, decode_frame
from tests.conftest import (
    Clients,
    region_edge_url,
    small_topology,
    start_mesh,
    token_for,
)
from topology.launcher import Mesh

MAX_CONTENT_BYTES = 4096
# Errors echo little of what the client sent, whatever its size.
MAX_ERROR_CHARS = 1000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(
    ["id", "to", "group", "content", "cursors", "users", "subscribe", "op", "token"]
)
frame_shaped = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from([*CLIENT_FRAME_TYPES, "shout", ""]),
    st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=6),
)


def decode_and_check(text: str) -> None:
    """Decode like the edge does; only the two client errors may escape."""
    try:
        frame = decode_frame(text)
        if isinstance(frame, SendFrame):
            check_content(frame, MAX_CONTENT_BYTES)
    except (MalformedFrame, ContentTooLarge) as exc:
        assert exc.message
        assert len(exc.message) < MAX_ERROR_CHARS


@given(st.text())
def test_decoder_survives_any_text(text: str) -> None:
    decode_and_check(text)


@given(json_values)
def test_decoder_survives_any_json(value: Any) -> None:
    decode_and_check(json.dumps(value))


@given(frame_shaped)
def test_decoder_survives_frame_shaped_json(value: dict[str, Any]) -> None:
    decode_and_check(json.dumps(value))


@given(st.binary())
def test_decoder_survives_decoded_bytes(data: bytes) -> None:
    decode_and_check(data.decode("utf-8", errors="surrogateescape"))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 200_000, id="deep-array"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="deep-object"),
        pytest.param('{"type": "send", "id": ' + "9" * 5000 + "}", id="huge-int"),
        pytest.param('{"type": ' + '"' + "x" * 200_000 + '"}', id="huge-type"),
        pytest.param(
            json.dumps({"type": "send", "id": "a", "to": "b", "x" * 100_000: 1}),
            id="huge-field-name",
        ),
        pytest.param('{"type": "send", "content": NaN}', id="nan"),
        pytest.param('{"type": "ping", "type": "send"}', id="duplicate-key"),
    ],
)
def test_decoder_rejects_hostile_shapes(text: str) -> None:
    with pytest.raises(MalformedFrame) as caught:
        decode_frame(text)
    assert len(caught.value.message) < MAX_ERROR_CHARS


@pytest.fixture(scope="module")
def fuzz_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A mesh whose limits let thousands of bad frames reach the decoder."""
    generous = {"per_s": 100_000, "burst": 100_000}
    topology = small_topology(
        "fuzz-mesh",
        limits={
            "bytes_per_connection": {"per_s": 10**8, "burst": 10**8},
            "bytes_per_user": {"per_s": 10**8, "burst": 10**8},
            "messages_per_connection": generous,
            "messages_per_user": generous,
            "presence_per_connection": generous,
            "presence_per_user": generous,
        },
    )
    mesh = start_mesh(topology, tmp_path_factory.mktemp("fuzz"))
    try:
        yield mesh
    finally:
        mesh.stop()


def edge_http_url(mesh: Mesh) -> str:
    edge = mesh.topology.get_region("eu-west").edges[0]
    return f"http://{edge.host}:{edge.port}"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    user=st.text(max_size=100),
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
)
def test_route_endpoint_answers_any_query(
    fuzz_mesh: Mesh, user: str, extra: dict[str, str]
) -> None:
    response = httpx.get(
        f"{edge_http_url(fuzz_mesh)}/v1/route",
        params={**extra, "user": user},
        timeout=10,
    )
    assert response.status_code in (200, 400)
    body = response.json()
    if response.status_code == 400:
        assert body["code"] == "bad_request"
    else:
        assert body["user"] == user


def malformed_frames(count: int) -> list[str]:
    """Return `count` bad frames of many shapes, none of them storable."""
    shapes = [
        "{not json",
        "[1, 2, 3]",
        '"just a string"',
        "null",
        '{"type": "shout"}',
        '{"type": "send", "id": "m", "to": "bob"}',
        '{"type": "send", "id": "bad id!", "to": "bob", "content": "x"}',
        '{"type": "send", "id": "m", "to": "bob", "content": "", "x": 1}',
        '{"type": "send", "id": "m", "to": "bob", "group": "g", "content": "x"}',
        '{"type": "send", "id": "m", "to": "alice", "content": "to self"}',
        '{"type": "send", "id": "m", "to": "Bob!", "content": "x"}',
        '{"type": "send", "id": "m", "to": "bob", "content": "\\ud800"}',
        '{"type": "sync", "cursors": {"dm:alice:bob": -1}}',
        '{"type": "sync", "cursors": [1]}',
        '{"type": "group", "id": "g", "op": "explode", "group": "x"}',
        '{"type": "presence", "id": "p", "users": []}',
        '{"type": "auth", "token": "again"}',
        "[" * 5000,
        '{"type": "send", "id": ' + "9" * 5000 + "}",
        json.dumps({"type": "send", "id": "big", "to": "bob", "content": "x" * 5000}),
    ]
    return [shapes[i % len(shapes)] for i in range(count)]


async def test_burst_of_malformed_frames_stores_nothing(fuzz_mesh: Mesh) -> None:
    clients = Clients(fuzz_mesh)
    try:
        bob = await clients.connect("bob", "us-east")
        await bob.sync()
        before = dict(bob.cursors)
        stored_before = _stored_messages(fuzz_mesh)
        frames = malformed_frames(3000)

        errors = await _send_and_count_errors(fuzz_mesh, frames)

        async with httpx.AsyncClient(timeout=5) as http:
            health = await http.get(f"{edge_http_url(fuzz_mesh)}/healthz")
        await asyncio.sleep(1.0)
        await bob.sync()
    finally:
        await clients.close_all()

    assert errors == len(frames)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert bob.cursors == before
    assert _stored_messages(fuzz_mesh) == stored_before


async def _send_and_count_errors(mesh: Mesh, frames: list[str]) -> int:
    """Send every frame on one connection; return the errors it got back.

    Replies are read while sending: a client that reads nothing overflows
    its outbox on the edge and is disconnected as too slow.
    """
    url = region_edge_url(mesh, "eu-west")
    async with websockets.connect(url, max_size=2**20) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token_for(mesh, "alice")}))
        assert json.loads(await ws.recv())["type"] == "hello"

        async def count_errors() -> int:
            errors = 0
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "pong":
                    return errors
                if event["type"] == "error":
                    errors += 1

        counter = asyncio.create_task(count_errors())
        for frame in frames:
            await ws.send(frame)
        await ws.send('{"type": "ping"}')
        async with asyncio.timeout(60):
            return await counter


def _stored_messages(mesh: Mesh) -> int:
    with sqlite3.connect(mesh.layout.data / "chatmesh.db") as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
