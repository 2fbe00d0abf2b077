"""Bad input over a real WebSocket: a clear error, connection kept, nothing stored."""

from __future__ import annotations

import json
import time

import pytest
import websockets

from chatmesh.client import ChatClient, ChatError
from core.schema import CommittedEvent, ErrorEvent, PongEvent
from tests.conftest import Clients, region_edge_url, token_for

BAD_FRAMES = [
    pytest.param("{not json", "malformed_frame", "not valid JSON", id="malformed-json"),
    pytest.param("[1, 2]", "malformed_frame", "JSON object", id="not-an-object"),
    pytest.param(
        '{"type": "shout"}',
        "malformed_frame",
        "unknown frame type 'shout'",
        id="unknown-type",
    ),
    pytest.param(
        '{"type": "send", "id": "m1", "to": "bob"}',
        "malformed_frame",
        "content",
        id="missing-content",
    ),
    pytest.param(
        '{"type": "send", "id": "m2", "content": "x"}',
        "malformed_frame",
        "to",
        id="missing-to",
    ),
    pytest.param(
        '{"type": "send", "id": "bad id!", "to": "bob", "content": "x"}',
        "malformed_frame",
        "id",
        id="bad-client-id",
    ),
    pytest.param(
        '{"type": "send", "id": "m3", "to": "bob", "content": "x", "extra": 1}',
        "malformed_frame",
        "extra",
        id="unknown-field",
    ),
    pytest.param(
        '{"type": "send", "id": "m4", "to": "bob", "content": ""}',
        "malformed_frame",
        "empty",
        id="empty-content",
    ),
    pytest.param(
        '{"type": "send", "id": "m5", "to": "bob", "content": "\\ud800"}',
        "malformed_frame",
        "UTF-8",
        id="lone-surrogate",
    ),
    pytest.param(
        '{"type": "send", "id": "m6", "to": "alice", "content": "me"}',
        "invalid_recipient",
        "yourself",
        id="to-self",
    ),
    pytest.param(
        '{"type": "send", "id": "m7", "to": "nobody-here", "content": "x"}',
        "unknown_recipient",
        "nobody-here",
        id="unknown-user",
    ),
    pytest.param(
        json.dumps({"type": "send", "id": "m8", "to": "bob", "content": "é" * 2049}),
        "content_too_large",
        "4098 bytes",
        id="over-limit",
    ),
    pytest.param(
        '{"type": "auth", "token": "again"}',
        "malformed_frame",
        "already authenticated",
        id="second-auth",
    ),
]


@pytest.mark.parametrize(("frame", "code", "detail"), BAD_FRAMES)
async def test_bad_frame_rejected_and_nothing_stored(
    clients: Clients, frame: str, code: str, detail: str
) -> None:
    alice = await clients.connect("alice", "eu-west")
    bob = await clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    before = dict(bob.cursors)

    await alice.send_raw(frame)
    error = await alice.wait_for(lambda e: isinstance(e, ErrorEvent))

    assert error.code == code
    assert detail in error.message
    # The connection survives: a ping still gets its pong.
    await alice.send_raw('{"type": "ping"}')
    await alice.wait_for(lambda e: isinstance(e, PongEvent))
    # Nothing was stored: bob's next sync brings nothing new.
    await bob.sync()
    assert bob.cursors == before


async def test_content_at_limit_is_accepted(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    accepted = await alice.send("bob", "é" * 2048)  # exactly 4096 bytes
    assert accepted.duplicate is False


async def test_binary_frame_rejected(clients: Clients) -> None:
    url = region_edge_url(clients.mesh, "eu-west")
    async with websockets.connect(url) as ws:
        await ws.send(
            json.dumps({"type": "auth", "token": token_for(clients.mesh, "alice")})
        )
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(b"\x00\x01binary")
        # Deliveries of earlier tests' messages to alice may come first.
        error = json.loads(await ws.recv())
        while error["type"] != "error":
            error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert error["code"] == "malformed_frame"
        assert "binary" in error["message"]


@pytest.mark.parametrize(
    ("make_token", "detail"),
    [
        pytest.param(
            lambda mesh: token_for(mesh, "alice", ttl_s=10, now=time.time() - 60),
            "expired",
            id="expired",
        ),
        pytest.param(
            lambda mesh: token_for(mesh, "alice")[:-4] + "AAAA",
            "invalid",
            id="tampered",
        ),
        pytest.param(lambda mesh: "not-a-token", "invalid", id="garbage"),
    ],
)
async def test_bad_token_rejected(clients: Clients, make_token, detail: str) -> None:  # type: ignore[no-untyped-def]
    client = ChatClient(
        region_edge_url(clients.mesh, "eu-west"), make_token(clients.mesh)
    )
    with pytest.raises(ChatError) as caught:
        await client.connect()
    assert caught.value.code == "invalid_token"
    assert detail in caught.value.message


async def test_first_frame_must_be_auth(clients: Clients) -> None:
    url = region_edge_url(clients.mesh, "eu-west")
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        error = json.loads(await ws.recv())
        assert error["code"] == "invalid_token"
        assert "first frame" in error["message"]
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4001


async def test_token_for_one_user_cannot_read_another(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    await alice.sync()
    secret = "for bob only"
    accepted = await alice.send("bob", secret)
    await alice.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == accepted.id
    )
    bob = await clients.connect("bob", "us-east")
    await bob.sync()
    assert secret in [m.content for m in bob.shown]

    # carol asks for the alice-bob conversation by name, from the start.
    carol = await clients.connect("carol", "eu-west", cursors={"dm:alice:bob": 0})
    synced = await carol.sync()

    assert "dm:alice:bob" not in synced.cursors or synced.cursors["dm:alice:bob"] == 0
    assert all(m.conversation != "dm:alice:bob" for m in carol.shown)
