"""The HTTP transport against real meshes: delivery, resume, switching, polls."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmesh.client import ChatClient
from core.schema import CommittedEvent, MessageEvent, MessageView
from edge.affinity import owner_edge
from tests.conftest import small_topology, start_mesh, token_for
from tests.http_client import (
    TRANSPORTS,
    HttpChatClient,
    open_client,
    region_http_url,
)
from topology.launcher import Mesh

REPO = Path(__file__).resolve().parent.parent
Client = ChatClient | HttpChatClient
Opener = Callable[..., Awaitable[Client]]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def is_message(text: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, MessageEvent) and e.message.content == text


def in_conversation(shown: list[MessageView], conversation: str) -> list[MessageView]:
    return [m for m in shown if m.conversation == conversation]


@pytest.fixture
async def opened(mesh: Mesh) -> AsyncIterator[Opener]:
    """Open clients of any transport on the module's mesh; close them at the end."""
    clients: list[Client] = []

    async def open_one(
        transport: str, user: str, region: str, cursors: dict[str, int] | None = None
    ) -> Client:
        client = await open_client(mesh, transport, user, region, cursors)
        clients.append(client)
        return client

    try:
        yield open_one
    finally:
        for client in clients:
            await client.close()


async def connections(base_url: str) -> int:
    async with httpx.AsyncClient() as http:
        return int((await http.get(f"{base_url}/healthz")).json()["connections"])


async def settled_connections(base_url: str) -> int:
    """Return the connection count once two reads 0.2 s apart agree.

    Connections closed by the previous test may still be closing on the edge.
    """
    count = await connections(base_url)
    while True:
        await asyncio.sleep(0.2)
        again = await connections(base_url)
        if again == count:
            return count
        count = again


async def wait_for_connections(base_url: str, expected: int, timeout_s: float) -> int:
    """Poll /healthz until it reports `expected` connections; return the last count."""
    deadline = time.monotonic() + timeout_s
    count = await connections(base_url)
    while count != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = await connections(base_url)
    return count


# ---- delivery, resume and switching, for every transport --------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_message_crosses_regions(opened: Opener, transport: str) -> None:
    alice = await opened("websocket", "alice", "eu-west")
    bob = await opened(transport, "bob", "us-east")
    await alice.sync()
    await bob.sync()
    text = unique("hello")

    await alice.send("bob", text)
    received = await bob.wait_for(is_message(text))
    reply = unique("reply")
    sent = await bob.send("alice", reply)
    committed = await bob.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == sent.id
    )
    answered = await alice.wait_for(is_message(reply))

    assert received.message.sender == "alice"
    assert received.message.conversation == "dm:alice:bob"
    assert committed.conversation == "dm:alice:bob"
    assert committed.seq == received.message.seq + 1
    assert answered.message.seq == committed.seq
    assert answered.message.message_id == committed.message_id
    assert bob.cursors["dm:alice:bob"] == committed.seq


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_from_cursor_gets_only_missed(
    opened: Opener, transport: str
) -> None:
    bob = await opened(transport, "bob", "us-east")
    await bob.sync()
    cursors = dict(bob.cursors)
    await bob.close()
    alice = await opened("websocket", "alice", "eu-west")
    await alice.sync()
    missed = [unique(f"missed-{i}") for i in range(3)]
    for text in missed:
        sent = await alice.send("bob", text)
    await alice.wait_for(lambda e: isinstance(e, CommittedEvent) and e.id == sent.id)

    # bob comes back in the other region, from the cursors he held.
    again = await opened(transport, "bob", "eu-west", cursors)
    await again.sync()

    start = cursors.get("dm:alice:bob", 0)
    assert [m.content for m in again.shown] == missed
    assert [m.seq for m in again.shown] == [start + 1, start + 2, start + 3]
    if isinstance(again, HttpChatClient):
        assert again.repeated == []


@pytest.mark.parametrize("middle", ["longpoll", "shortpoll"])
async def test_transport_switch_misses_and_repeats_nothing(
    opened: Opener, middle: str
) -> None:
    conversation = "dm:alice:bob"
    alice = await opened("websocket", "alice", "eu-west")
    await alice.sync()
    sent: list[str] = []

    async def say(count: int, phase: str) -> None:
        for i in range(count):
            text = unique(f"{phase}-{i}")
            await alice.send("bob", text)
            sent.append(text)

    seen: list[MessageView] = []
    cursors: dict[str, int] = {}
    for phase, transport in enumerate(["websocket", middle, "websocket"]):
        bob = await opened(transport, "bob", "us-east", cursors)
        await bob.sync()
        if phase == 0:
            start = bob.cursors.get(conversation, 0)
            base = len(in_conversation(bob.shown, conversation))
        else:
            base = 0
        await say(3, f"{transport}{phase}")
        await bob.wait_for(is_message(sent[-1]))
        seen.extend(in_conversation(bob.shown, conversation)[base:])
        cursors = dict(bob.cursors)
        await bob.close()
        # A message while bob has no connection at all.
        await say(1, f"offline{phase}")

    final = await opened("longpoll", "bob", "us-east", cursors)
    await final.sync()
    seen.extend(in_conversation(final.shown, conversation))

    assert [m.content for m in seen] == sent
    assert [m.seq for m in seen] == list(range(start + 1, start + len(sent) + 1))


async def test_post_rejected_after_acceptance_reaches_poll(opened: Opener) -> None:
    group = unique("grp")
    alice = await opened("websocket", "alice", "eu-west")
    bob = await opened("longpoll", "bob", "us-east")
    assert isinstance(bob, HttpChatClient) and isinstance(alice, ChatClient)
    await alice.sync()
    await bob.sync()
    await alice.group("create", group, members=["bob"])
    first = {"type": "send", "id": unique("member"), "group": group, "content": "in"}
    assert (await bob.post_raw("/v1/messages", first)).status_code == 202
    await alice.group("remove", group, user="bob")

    # bob's edge may still hold his membership for a few seconds: then it
    # accepts the post, the sequencer rejects it, and a poll returns the error.
    late = {"type": "send", "id": "late-post", "group": group, "content": "late"}
    reply = await bob.post_raw("/v1/messages", late)
    if reply.status_code == 202:
        error = await bob.wait_for(
            lambda e: getattr(e, "type", None) == "error" and e.ref == "late-post"
        )
        code = error.code
    else:
        assert reply.status_code == 403
        code = reply.json()["code"]

    assert code == "not_a_member"
    await alice.sync()
    assert "late" not in [m.content for m in alice.shown]


# ---- long and short polls ---------------------------------------------------


async def test_long_poll_returns_soon_after_message(opened: Opener, mesh: Mesh) -> None:
    alice = await opened("websocket", "alice", "eu-west")
    bob = HttpChatClient(region_http_url(mesh, "us-east"), token_for(mesh, "bob"))
    await bob.connect()
    try:
        await alice.sync()
        await bob.sync()
        waiting = asyncio.create_task(bob.poll(wait_s=10))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "the poll returned before any message"

        text = unique("wake")
        sent_at = time.monotonic()
        await alice.send("bob", text)
        page = await asyncio.wait_for(waiting, 5)
        elapsed = time.monotonic() - sent_at
    finally:
        await bob.close()

    assert [e.message.content for e in page.events] == [text]
    assert elapsed < 1.0, f"the poll returned {elapsed:.2f} s after the send"


async def test_caught_up_session_still_sees_new_message(
    opened: Opener, mesh: Mesh
) -> None:
    # A session whose last poll found nothing may skip asking the core; the
    # delivery of a later message must still reach its next polls.
    alice = await opened("websocket", "alice", "eu-west")
    bob = HttpChatClient(
        region_http_url(mesh, "us-east"), token_for(mesh, "bob"), wait_s=0
    )
    await bob.connect()
    try:
        await alice.sync()
        await bob.sync()
        quiet = await bob.poll(wait_s=0)
        text = unique("after-quiet")
        await alice.send("bob", text)
        received = await bob.wait_for(is_message(text), timeout_s=5)
    finally:
        await bob.close()

    assert quiet.events == []
    assert received.message.sender == "alice"
    assert bob.repeated == []


async def test_long_poll_returns_empty_after_wait(mesh: Mesh) -> None:
    dave = HttpChatClient(region_http_url(mesh, "eu-west"), token_for(mesh, "dave"))
    await dave.connect()
    try:
        await dave.sync()
        before = dict(dave.cursors)
        started = time.monotonic()
        page = await dave.poll(wait_s=1.0)
        elapsed = time.monotonic() - started
    finally:
        await dave.close()

    assert page.events == []
    assert page.more is False
    assert page.cursors == before
    assert 1.0 <= elapsed < 2.0


async def test_short_poll_returns_at_once(mesh: Mesh) -> None:
    dave = HttpChatClient(region_http_url(mesh, "eu-west"), token_for(mesh, "dave"))
    try:
        await dave.sync()
        started = time.monotonic()
        page = await dave.poll(wait_s=0)
        elapsed = time.monotonic() - started
    finally:
        await dave.close()

    assert page.events == []
    assert elapsed < 0.5


@pytest.mark.parametrize("with_session", [False, True], ids=["sessionless", "session"])
async def test_client_disconnect_frees_poll(mesh: Mesh, with_session: bool) -> None:
    base_url = region_http_url(mesh, "eu-west")
    token = token_for(mesh, "carol")
    carol = HttpChatClient(base_url, token)
    query = "wait_s=30"
    if with_session:
        await carol.connect()
        query += f"&session={carol.session}"
    before = await settled_connections(base_url)
    host, port = base_url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /v1/events?{query} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        # A session is counted from its creation; a poll without one from its start.
        during = before if with_session else before + 1
        assert await wait_for_connections(base_url, during, 3.0) == during
        await asyncio.sleep(0.2)
    finally:
        writer.close()
        await writer.wait_closed()
    started = time.monotonic()
    after = await wait_for_connections(
        base_url, before - 1 if with_session else before, 3.0
    )
    freed_in = time.monotonic() - started

    assert after == (before - 1 if with_session else before)
    assert freed_in < 1.0
    if with_session:
        # The session outlives the dropped poll: it can poll again.
        page = await carol.poll(wait_s=0)
        assert page.more is False
    await carol.close()


async def test_new_poll_ends_waiting_poll_of_session(mesh: Mesh) -> None:
    base_url = region_http_url(mesh, "eu-west")
    carol = HttpChatClient(base_url, token_for(mesh, "carol"))
    await carol.connect()
    try:
        await carol.sync()
        waiting = asyncio.create_task(carol.poll(wait_s=20))
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=base_url) as http:
            second = await http.get(
                "/v1/events",
                params={"session": carol.session, "wait_s": "0"},
                headers={"Authorization": f"Bearer {token_for(mesh, 'carol')}"},
            )
        first = await asyncio.wait_for(waiting, 2.0)
    finally:
        await carol.close()

    assert second.status_code == 200
    assert first.events == []


async def test_deleted_session_is_unknown(mesh: Mesh) -> None:
    carol = HttpChatClient(region_http_url(mesh, "eu-west"), token_for(mesh, "carol"))
    hello = await carol.connect()
    await carol.close()
    async with httpx.AsyncClient(base_url=region_http_url(mesh, "eu-west")) as http:
        reply = await http.get(
            "/v1/events",
            params={"session": hello.connection},
            headers={"Authorization": f"Bearer {token_for(mesh, 'carol')}"},
        )

    assert reply.status_code == 404
    assert reply.json()["code"] == "unknown_session"


# ---- bad input: the WebSocket suite's cases, over HTTP ------------------------

BAD_BODIES = [
    pytest.param("{not json", 400, "malformed_frame", "not valid JSON", id="malformed"),
    pytest.param("[1, 2]", 400, "malformed_frame", "JSON object", id="not-an-object"),
    pytest.param(
        '{"type": "shout"}',
        400,
        "malformed_frame",
        "unknown frame type 'shout'",
        id="unknown-type",
    ),
    pytest.param(
        '{"type": "send", "id": "m1", "to": "bob"}',
        400,
        "malformed_frame",
        "content",
        id="missing-content",
    ),
    pytest.param(
        '{"type": "send", "id": "m2", "content": "x"}',
        400,
        "malformed_frame",
        "to",
        id="missing-to",
    ),
    pytest.param(
        '{"type": "send", "id": "bad id!", "to": "bob", "content": "x"}',
        400,
        "malformed_frame",
        "id",
        id="bad-client-id",
    ),
    pytest.param(
        '{"type": "send", "id": "m3", "to": "bob", "content": "x", "extra": 1}',
        400,
        "malformed_frame",
        "extra",
        id="unknown-field",
    ),
    pytest.param(
        '{"type": "send", "id": "m4", "to": "bob", "content": ""}',
        400,
        "malformed_frame",
        "empty",
        id="empty-content",
    ),
    pytest.param(
        '{"type": "send", "id": "m5", "to": "bob", "content": "\\ud800"}',
        400,
        "malformed_frame",
        "UTF-8",
        id="lone-surrogate",
    ),
    pytest.param(
        '{"type": "send", "id": "m6", "to": "alice", "content": "me"}',
        400,
        "invalid_recipient",
        "yourself",
        id="to-self",
    ),
    pytest.param(
        '{"type": "send", "id": "m7", "to": "nobody-here", "content": "x"}',
        404,
        "unknown_recipient",
        "nobody-here",
        id="unknown-user",
    ),
    pytest.param(
        json.dumps({"type": "send", "id": "m8", "to": "bob", "content": "é" * 2049}),
        413,
        "content_too_large",
        "4098 bytes",
        id="over-limit",
    ),
    pytest.param(
        '{"type": "auth", "token": "again"}',
        400,
        "malformed_frame",
        "takes a send frame",
        id="auth-frame",
    ),
    pytest.param(
        '{"type": "sync", "cursors": {}}',
        400,
        "malformed_frame",
        "takes a send frame",
        id="sync-frame",
    ),
    pytest.param(b"\xff\x00binary", 400, "malformed_frame", "UTF-8", id="binary"),
    pytest.param(
        "x" * (256 * 1024 + 1),
        413,
        "content_too_large",
        "request body",
        id="huge-body",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "detail"), BAD_BODIES)
async def test_bad_message_rejected_and_nothing_stored(
    mesh: Mesh, body: str | bytes, status: int, code: str, detail: str
) -> None:
    alice = HttpChatClient(region_http_url(mesh, "eu-west"), token_for(mesh, "alice"))
    bob = HttpChatClient(region_http_url(mesh, "us-east"), token_for(mesh, "bob"))
    try:
        await alice.connect()
        await bob.sync()
        before = dict(bob.cursors)

        reply = await alice.post_raw("/v1/messages", body)
        error = reply.json()

        assert reply.status_code == status
        assert error["code"] == code
        assert detail in error["message"]
        assert reply.headers["content-type"] == "application/json"
        # The session survives, and nothing was stored for bob.
        assert (await alice.poll(wait_s=0)).more is False
        await bob.sync()
        assert bob.cursors == before
    finally:
        await alice.close()
        await bob.close()


BAD_POLLS = [
    pytest.param("GET", {"wait_s": "soon"}, None, "wait_s", id="wait-not-number"),
    pytest.param("GET", {"wait_s": "31"}, None, "between 0 and 30", id="wait-too-long"),
    pytest.param("GET", {"wait_s": "-1"}, None, "between 0 and 30", id="wait-negative"),
    pytest.param("GET", {"wait_s": "nan"}, None, "between 0 and 30", id="wait-nan"),
    pytest.param(
        "GET", {"cursors": "{oops"}, None, "not valid JSON", id="cursors-json"
    ),
    pytest.param("GET", {"cursors": "[1]"}, None, "invalid cursors", id="cursors-list"),
    pytest.param(
        "GET", {"cursors": '{"dm:a:b": -1}'}, None, "invalid cursors", id="negative"
    ),
    pytest.param(
        "GET", {"cursors": '{"no way": 1}'}, None, "invalid cursors", id="bad-name"
    ),
    pytest.param(
        "POST",
        {"cursors": "{}"},
        '{"type": "sync"}',
        "in the body",
        id="cursors-twice",
    ),
    pytest.param(
        "POST",
        {},
        '{"type": "send", "id": "p1", "to": "bob", "content": "x"}',
        "takes a sync frame",
        id="send-as-poll",
    ),
    pytest.param("POST", {}, '{"type": "sync", "cursors": 3}', "cursors", id="body"),
]


@pytest.mark.parametrize(("method", "params", "body", "detail"), BAD_POLLS)
async def test_bad_poll_rejected(
    mesh: Mesh, method: str, params: dict[str, str], body: str | None, detail: str
) -> None:
    async with httpx.AsyncClient(base_url=region_http_url(mesh, "eu-west")) as http:
        reply = await http.request(
            method,
            "/v1/events",
            params=params,
            content=body,
            headers={"Authorization": f"Bearer {token_for(mesh, 'alice')}"},
        )

    assert reply.status_code == 400
    assert reply.json()["code"] in {"bad_request", "malformed_frame"}
    assert detail in reply.json()["message"]


async def test_poll_by_post_with_sync_frame(mesh: Mesh) -> None:
    bob = HttpChatClient(region_http_url(mesh, "us-east"), token_for(mesh, "bob"))
    try:
        cursors = await bob.sync()
        reply = await bob.post_raw(
            "/v1/events?wait_s=0", {"type": "sync", "cursors": {}}
        )
    finally:
        await bob.close()

    assert reply.status_code == 200
    assert reply.json()["cursors"] == cursors


ENDPOINTS = [
    ("POST", "/v1/sessions", None),
    ("DELETE", "/v1/sessions/any", None),
    ("POST", "/v1/messages", {"type": "send", "id": "t1", "to": "bob", "content": "x"}),
    ("GET", "/v1/events", None),
    ("POST", "/v1/events", {"type": "sync"}),
]
BAD_AUTH = [
    pytest.param(lambda mesh: None, "missing Authorization", id="missing"),
    pytest.param(lambda mesh: "Basic YWxpY2U6eA==", "Bearer <token>", id="basic"),
    pytest.param(
        lambda mesh: (
            "Bearer " + token_for(mesh, "alice", ttl_s=10, now=time.time() - 60)
        ),
        "expired",
        id="expired",
    ),
    pytest.param(
        lambda mesh: "Bearer " + token_for(mesh, "alice")[:-4] + "AAAA",
        "invalid",
        id="tampered",
    ),
    pytest.param(lambda mesh: "Bearer not-a-token", "invalid", id="garbage"),
]


@pytest.mark.parametrize(("make_header", "detail"), BAD_AUTH)
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_bad_token_rejected_and_nothing_stored(  # type: ignore[no-untyped-def]
    mesh: Mesh, make_header, detail: str, method: str, path: str, body: Any
) -> None:
    bob = HttpChatClient(region_http_url(mesh, "us-east"), token_for(mesh, "bob"))
    await bob.sync()
    before = dict(bob.cursors)
    header = make_header(mesh)
    headers = {} if header is None else {"Authorization": header}
    async with httpx.AsyncClient(base_url=region_http_url(mesh, "eu-west")) as http:
        reply = await http.request(method, path, json=body, headers=headers)
    await bob.sync()
    await bob.close()

    assert reply.status_code == 401
    assert reply.json()["code"] == "invalid_token"
    assert detail in reply.json()["message"]
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert bob.cursors == before


async def test_session_of_another_user_is_unknown(mesh: Mesh) -> None:
    alice = HttpChatClient(region_http_url(mesh, "eu-west"), token_for(mesh, "alice"))
    hello = await alice.connect()
    try:
        async with httpx.AsyncClient(base_url=region_http_url(mesh, "eu-west")) as http:
            reply = await http.get(
                "/v1/events",
                params={"session": hello.connection},
                headers={"Authorization": f"Bearer {token_for(mesh, 'carol')}"},
            )
    finally:
        await alice.close()

    assert reply.status_code == 404
    assert reply.json()["code"] == "unknown_session"


# ---- development tokens, the web page and the OpenAPI document ---------------


async def test_dev_token_for_dev_user(mesh: Mesh) -> None:
    base_url = region_http_url(mesh, "eu-west")
    async with httpx.AsyncClient(base_url=base_url) as http:
        minted = await http.post("/v1/dev/token", json={"user": "alice"})
        stranger = await http.post("/v1/dev/token", json={"user": "mallory"})
        invalid = await http.post("/v1/dev/token", json={"user": "Not Valid"})
        session = await http.post(
            "/v1/sessions",
            headers={"Authorization": f"Bearer {minted.json()['token']}"},
        )
        await http.delete(
            f"/v1/sessions/{session.json()['connection']}",
            headers={"Authorization": f"Bearer {minted.json()['token']}"},
        )

    assert minted.status_code == 200
    assert minted.json()["user"] == "alice"
    assert session.status_code == 201
    assert session.json()["user"] == "alice"
    assert stranger.status_code == 404
    assert stranger.json()["code"] == "not_found"
    assert invalid.status_code == 400


async def test_web_page_and_assets_served(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=region_http_url(mesh, "eu-west")) as http:
        page = await http.get("/")
        script = await http.get("/static/app.js")
        style = await http.get("/static/style.css")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text
    assert script.status_code == 200
    assert "renderPresence" in script.text
    assert style.status_code == 200


async def test_served_openapi_matches_checked_in(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=region_http_url(mesh, "us-east")) as http:
        served = await http.get("/openapi.yaml")

    checked_in = (REPO / "docs" / "openapi.yaml").read_text()
    assert served.status_code == 200
    assert served.text == checked_in, (
        "docs/openapi.yaml is stale; run: python -m edge.openapi > docs/openapi.yaml"
    )


# ---- a region with two edges and no development users -------------------------


@pytest.fixture(scope="module")
def two_edge_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    topology = small_topology("http-two-edges", edges_per_region=2, dev_users=[])
    run = start_mesh(topology, tmp_path_factory.mktemp("http-mesh2"))
    try:
        yield run
    finally:
        run.stop()


def edge_base_url(mesh: Mesh, name: str) -> str:
    region = next(r for r in mesh.topology.regions if name in {e.name for e in r.edges})
    edge = next(e for e in region.edges if e.name == name)
    return f"http://{edge.host}:{edge.port}"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_wrong_edge_names_owner(
    two_edge_mesh: Mesh, method: str, path: str, body: Any
) -> None:
    owner = owner_edge("alice", ["eu-west-1", "eu-west-2"])
    other = "eu-west-2" if owner == "eu-west-1" else "eu-west-1"
    headers = {"Authorization": f"Bearer {token_for(two_edge_mesh, 'alice')}"}
    async with httpx.AsyncClient(base_url=edge_base_url(two_edge_mesh, other)) as http:
        reply = await http.request(method, path, json=body, headers=headers)

    assert reply.status_code == 421
    assert reply.json()["code"] == "wrong_edge"
    assert reply.json()["url"] == edge_base_url(two_edge_mesh, owner)


async def test_dev_token_disabled_without_dev_users(two_edge_mesh: Mesh) -> None:
    base_url = edge_base_url(two_edge_mesh, "eu-west-1")
    async with httpx.AsyncClient(base_url=base_url) as http:
        reply = await http.post("/v1/dev/token", json={"user": "alice"})

    assert reply.status_code == 404
    assert reply.json()["code"] == "not_found"


def test_schemathesis_finds_no_server_error(
    two_edge_mesh: Mesh, tmp_path: Path
) -> None:
    owner = owner_edge("alice", ["eu-west-1", "eu-west-2"])
    base_url = edge_base_url(two_edge_mesh, owner)
    config = tmp_path / "schemathesis.toml"
    # A documented 503 (the core or JetStream is down) is not a server error.
    config.write_text(
        "[checks.not_a_server_error]\n"
        'expected-statuses = ["2xx", "3xx", "4xx", "503"]\n'
    )
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.yaml",
        "--url",
        base_url,
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {token_for(two_edge_mesh, 'alice')}",
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    result = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


async def test_core_outage_answers_503_with_retry_after(two_edge_mesh: Mesh) -> None:
    owner = owner_edge("bob", ["us-east-1", "us-east-2"])
    headers = {"Authorization": f"Bearer {token_for(two_edge_mesh, 'bob')}"}
    core = two_edge_mesh.processes["core-0"]
    core.stop()
    try:
        async with httpx.AsyncClient(
            base_url=edge_base_url(two_edge_mesh, owner), timeout=15
        ) as http:
            send = await http.post(
                "/v1/messages",
                json={"type": "send", "id": "o1", "to": "nobody", "content": "x"},
                headers=headers,
            )
            poll = await http.get("/v1/events", headers=headers)
    finally:
        core.start()
        await core.wait_healthy(60)

    for reply in (send, poll):
        assert reply.status_code == 503
        assert reply.json()["code"] == "unavailable"
        assert int(reply.headers["retry-after"]) > 0
