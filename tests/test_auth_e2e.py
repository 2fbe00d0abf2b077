"""Tokens and authorization through a real mesh: who may read, post and see.

Every test here has a user try something that belongs to someone else.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from chatmesh.client import ChatClient, ChatError
from core.schema import CommittedEvent, ErrorEvent, PresenceEvent
from core.tokens import KeyStore, mint_token
from tests.conftest import Clients, region_edge_url, token_for
from topology.launcher import Mesh


def key_store(mesh: Mesh) -> KeyStore:
    return KeyStore(mesh.layout.token_private_keys, mesh.layout.token_public_keys)


async def rejection(mesh: Mesh, token: str) -> ChatError:
    client = ChatClient(region_edge_url(mesh, "eu-west"), token)
    with pytest.raises(ChatError) as caught:
        await client.connect()
    return caught.value


async def test_bad_tokens_rejected_and_never_logged(clients: Clients) -> None:
    mesh = clients.mesh
    key = key_store(mesh).signing_key()
    stranger = KeyStore(
        mesh.layout.root / "stranger-keys", mesh.layout.root / "stranger.json"
    ).ensure()
    bad = {
        "expired": token_for(mesh, "alice", ttl_s=10, now=time.time() - 300),
        "tampered": token_for(mesh, "alice")[:-6] + "AAAAAA",
        "wrong audience": mint_token(key, "alice", "some-other-mesh"),
        "unknown key": mint_token(stranger, "alice", mesh.topology.name),
    }
    errors = {name: await rejection(mesh, token) for name, token in bad.items()}

    assert {e.code for e in errors.values()} == {"invalid_token"}
    assert "expired" in errors["expired"].message
    assert "signature does not verify" in errors["tampered"].message
    assert "another mesh" in errors["wrong audience"].message
    assert "unknown or retired" in errors["unknown key"].message
    log_text = (mesh.layout.logs / "edge-eu-west-1.log").read_text()
    assert log_text.count("ws.auth_rejected") >= len(bad)
    for name, token in bad.items():
        signature = token.rsplit(".", 1)[-1]
        assert token not in log_text, f"the {name} token is in the edge's log"
        assert signature not in log_text, f"the {name} signature is in the log"


async def test_key_rotation_on_running_edge(clients: Clients) -> None:
    mesh = clients.mesh
    store = key_store(mesh)
    old_token = token_for(mesh, "alice")

    store.rotate()
    new_token = token_for(mesh, "alice")
    for token in (old_token, new_token):
        client = ChatClient(region_edge_url(mesh, "eu-west"), token)
        hello = await client.connect()
        await client.close()
        assert hello.user == "alice"

    store.rotate()
    retired = await rejection(mesh, old_token)
    assert "unknown or retired" in retired.message


async def test_sync_with_others_cursors_reads_nothing(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    await alice.sync()
    group = f"private-{int(time.time() * 1000)}"
    await alice.group("create", group, members=["bob"])
    for accepted in (
        await alice.send("bob", "dm secret"),
        await alice.send_to_group(group, "group secret"),
    ):
        await alice.wait_for(
            lambda e, ref=accepted.id: isinstance(e, CommittedEvent) and e.id == ref
        )

    cursors = {"dm:alice:bob": 0, f"grp:{group}": 0, "dm:alice:carol": 0}
    carol = await clients.connect("carol", "us-east", cursors=cursors)
    synced = await carol.sync()

    assert [m for m in carol.shown if m.conversation in cursors] == []
    for conversation, cursor in cursors.items():
        assert synced.cursors.get(conversation, 0) == cursor


async def test_sender_cannot_be_forged(clients: Clients) -> None:
    mallory = await clients.connect("dave", "eu-west")
    await mallory.send_raw(
        '{"type": "send", "id": "forged", "to": "bob", "content": "hi", '
        '"sender": "alice"}'
    )
    error = await mallory.wait_for(lambda e: isinstance(e, ErrorEvent))
    assert error.code == "malformed_frame"
    assert "sender" in error.message


@pytest.mark.parametrize(
    ("op", "fields", "code"),
    [
        ("add", {"user": "erin"}, "not_a_member"),
        ("remove", {"user": "bob"}, "not_a_member"),
        ("promote", {"user": "bob"}, "not_a_member"),
        ("demote", {"user": "bob"}, "not_a_member"),
        ("leave", {}, "not_a_member"),
        ("members", {}, "not_a_member"),
    ],
)
async def test_non_member_cannot_administer_group(
    clients: Clients, op: str, fields: dict[str, str], code: str
) -> None:
    owner = await clients.connect("alice", "eu-west")
    group = f"admin-{op}-{int(time.time() * 1000)}"
    await owner.group("create", group, members=["bob"])
    outsider = await clients.connect("carol", "us-east")

    with pytest.raises(ChatError) as caught:
        await outsider.group(op, group, **fields)
    view = await owner.group("members", group)

    assert caught.value.code == code
    assert view.members == {"alice": "owner", "bob": "member"}


@pytest.mark.parametrize("op", ["promote", "demote", "add", "remove"])
async def test_plain_member_cannot_change_roles_or_members(
    clients: Clients, op: str
) -> None:
    owner = await clients.connect("alice", "eu-west")
    group = f"roles-{op}-{int(time.time() * 1000)}"
    await owner.group("create", group, members=["bob", "carol"])
    member = await clients.connect("bob", "us-east")

    with pytest.raises(ChatError) as caught:
        await member.group(op, group, user="carol")
    view = await owner.group("members", group)

    assert caught.value.code == "not_authorized"
    assert view.members == {"alice": "owner", "bob": "member", "carol": "member"}


async def test_stranger_presence_subscription_gets_nothing(clients: Clients) -> None:
    stranger = await clients.connect("erin", "us-east")
    with pytest.raises(ChatError) as caught:
        await stranger.presence(["dave"], subscribe=True)
    assert caught.value.code == "not_authorized"

    dave = await clients.connect("dave", "eu-west")
    await asyncio.sleep(1.0)  # several presence intervals of the test topology
    await dave.close()
    await asyncio.sleep(1.0)

    pushed = []
    while not stranger.events.empty():
        event = stranger.events.get_nowait()
        if isinstance(event, PresenceEvent) and event.ref is None:
            pushed.append(event)
    assert pushed == []
