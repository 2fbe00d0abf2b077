"""Group chat through a real two-region mesh."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from chatmesh.client import ChatClient, ChatError
from core import subjects
from core.natsconn import connect_nats
from core.schema import CommittedEvent, ErrorEvent
from edge.core_client import MEMBER_TTL_S
from tests.conftest import Clients, small_topology, start_mesh
from topology.launcher import Mesh
from topology.render import leaf_client_url

GROUP_LIMIT = 5


@pytest.fixture(scope="module")
def group_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    topology = small_topology(
        "group-mesh",
        limits={"group_size_limit": GROUP_LIMIT},
        dev_users=["alice", "bob", "carol", "dave", "erin", "frank", "gina"],
    )
    mesh = start_mesh(topology, tmp_path_factory.mktemp("groups"))
    try:
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
async def clients(group_mesh: Mesh) -> AsyncIterator[Clients]:
    opened = Clients(group_mesh)
    try:
        yield opened
    finally:
        await opened.close_all()


def new_group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def texts(client: ChatClient, group: str) -> list[str]:
    return [
        m.content
        for m in client.shown
        if m.conversation == f"grp:{group}" and m.kind == "text"
    ]


async def synced(clients: Clients, user: str, region: str) -> ChatClient:
    client = await clients.connect(user, region)
    await client.sync()
    return client


async def wait_text(client: ChatClient, text: str) -> None:
    await client.wait_for(
        lambda e: getattr(e, "message", None) is not None and e.message.content == text
    )


async def test_group_message_reaches_every_member_everywhere(clients: Clients) -> None:
    group = new_group()
    alice_phone = await synced(clients, "alice", "eu-west")
    alice_laptop = await synced(clients, "alice", "us-east")
    bob = await synced(clients, "bob", "us-east")
    carol = await synced(clients, "carol", "eu-west")
    view = await alice_phone.group(
        "create", group, name="Team", members=["bob", "carol", "dave"]
    )
    assert view.owner == "alice"
    assert view.members == {
        "alice": "owner",
        "bob": "member",
        "carol": "member",
        "dave": "member",
    }

    accepted = await alice_phone.send_to_group(group, "hello team")
    await alice_phone.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == accepted.id
    )
    for client in (alice_laptop, bob, carol):
        await wait_text(client, "hello team")

    dave = await synced(clients, "dave", "us-east")  # offline until now
    assert texts(dave, group) == ["hello team"]
    # dave was added at seq 4, so he reads from his own addition on.
    mine = [
        (m.seq, m.kind, m.target)
        for m in dave.shown
        if m.conversation == f"grp:{group}"
    ]
    assert mine == [(4, "member_added", "dave"), (5, "text", None)]


async def test_group_message_stored_once(clients: Clients, group_mesh: Mesh) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    await alice.group("create", group, members=["bob", "carol"])
    accepted = await alice.send_to_group(group, "stored once")
    await alice.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == accepted.id
    )

    with sqlite3.connect(group_mesh.layout.data / "chatmesh.db") as db:
        rows = db.execute(
            "SELECT count(*) FROM messages WHERE conversation = ? AND content = ?",
            (f"grp:{group}", "stored once"),
        ).fetchone()
    assert rows[0] == 1


async def test_group_delivery_crosses_to_region_once(
    clients: Clients, group_mesh: Mesh
) -> None:
    group = new_group()
    members = ["bob", "carol", "dave"]
    alice = await synced(clients, "alice", "us-east")
    locals_ = [await synced(clients, user, "eu-west") for user in members]
    await alice.group("create", group, members=members)
    await asyncio.sleep(0.5)  # let the membership events drain

    region = group_mesh.topology.get_region("eu-west")
    before = await _stream_messages(group_mesh, region)
    accepted = await alice.send_to_group(group, "one copy")
    await alice.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == accepted.id
    )
    for client in locals_:
        await wait_text(client, "one copy")
    after = await _stream_messages(group_mesh, region)

    assert after - before == 1


async def _stream_messages(mesh: Mesh, region) -> int:  # type: ignore[no-untyped-def]
    url = leaf_client_url(mesh.topology, region)
    nc = await connect_nats([url], "test-ops", mesh.ops_auth())
    try:
        js = nc.jetstream(domain=region.name)
        info = await js.stream_info(subjects.region_deliver_stream(region.name))
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_only_members_post_and_read(clients: Clients) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    await alice.group("create", group, members=["bob"])
    erin = await synced(clients, "erin", "us-east")

    with pytest.raises(ChatError) as posted:
        await erin.send_to_group(group, "let me in")
    with pytest.raises(ChatError) as listed:
        await erin.group("members", group)
    erin_again = await clients.connect("erin", "eu-west", cursors={f"grp:{group}": 0})
    await erin_again.sync()

    assert posted.value.code == "not_a_member"
    assert listed.value.code == "not_a_member"
    assert f"grp:{group}" not in erin_again.cursors or texts(erin_again, group) == []


async def test_admin_rules(clients: Clients) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    bob = await synced(clients, "bob", "us-east")
    await alice.group("create", group, members=["bob", "carol"])

    with pytest.raises(ChatError) as member_adds:
        await bob.group("add", group, user="dave")
    await alice.group("promote", group, user="bob")
    added = await bob.group("add", group, user="dave")
    with pytest.raises(ChatError) as admin_removes_owner:
        await bob.group("remove", group, user="alice")
    with pytest.raises(ChatError) as owner_leaves:
        await alice.group("leave", group)
    with pytest.raises(ChatError) as unknown:
        await alice.group("add", group, user="nobody")
    with pytest.raises(ChatError) as missing:
        await alice.group("members", "no-such-group")

    assert member_adds.value.code == "not_authorized"
    assert "dave" in added.members
    assert admin_removes_owner.value.code == "not_authorized"
    assert owner_leaves.value.code == "not_authorized"
    assert unknown.value.code == "unknown_recipient"
    assert missing.value.code == "group_not_found"
    groups = {g.group: g.role for g in await bob.groups()}
    assert groups[group] == "admin"


async def test_join_reaching_limit_rejected(clients: Clients) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    await alice.group("create", group, members=["bob", "carol", "dave"])  # 4 members

    with pytest.raises(ChatError) as full:
        await alice.group("add", group, user="erin")  # would be 5 = the limit
    members = await alice.group("members", group)

    assert full.value.code == "group_full"
    assert f"fewer than {GROUP_LIMIT}" in full.value.message
    assert set(members.members) == {"alice", "bob", "carol", "dave"}
    with pytest.raises(ChatError) as too_big:
        await alice.group(
            "create", new_group(), members=["bob", "carol", "dave", "erin"]
        )
    assert too_big.value.code == "group_full"


async def test_membership_changes_ordered_with_messages(clients: Clients) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    bob = await synced(clients, "bob", "us-east")
    await alice.group("create", group, members=["bob"])
    await alice.send_to_group(group, "before")
    await wait_text(bob, "before")
    removed = await alice.group("remove", group, user="bob")
    # The edge forwards the add only once the post before it is committed,
    # so the post comes before carol's membership without a wait here.
    await alice.send_to_group(group, "after removal")
    added = await alice.group("add", group, user="carol")
    last = await alice.send_to_group(group, "after carol joined")
    await alice.wait_for(lambda e: isinstance(e, CommittedEvent) and e.id == last.id)

    await asyncio.sleep(0.5)
    bob_seqs = [m.seq for m in bob.shown if m.conversation == f"grp:{group}"]
    assert max(bob_seqs) == removed.seq
    assert "after removal" not in texts(bob, group)

    bob_later = await clients.connect("bob", "eu-west", cursors={f"grp:{group}": 0})
    await bob_later.sync()
    assert (
        max(m.seq for m in bob_later.shown if m.conversation == f"grp:{group}")
        == removed.seq
    )

    carol = await clients.connect("carol", "us-east", cursors={f"grp:{group}": 0})
    await carol.sync()
    carol_seqs = [m.seq for m in carol.shown if m.conversation == f"grp:{group}"]
    assert carol_seqs[0] == added.seq
    assert texts(carol, group) == ["after carol joined"]


async def test_posts_precede_following_membership_change(clients: Clients) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    await alice.group("create", group, members=["bob"])
    changes = []
    for round_ in range(5):
        post = await alice.send_to_group(group, f"post {round_}")
        op = "remove" if round_ % 2 == 0 else "add"
        change = await alice.group(op, group, user="bob")
        committed = await alice.wait_for(
            lambda e, ref=post.id: isinstance(e, CommittedEvent) and e.id == ref
        )
        changes.append((committed.seq, change.seq))

    for post_seq, change_seq in changes:
        assert post_seq < change_seq


async def test_removed_member_post_rejected_after_acceptance(clients: Clients) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    bob = await synced(clients, "bob", "us-east")
    await alice.group("create", group, members=["bob"])
    await bob.send_to_group(group, "while a member")
    await alice.group("remove", group, user="bob")

    # bob's edge may still believe he is a member for a few seconds; then the
    # sequencer refuses the post and nothing is stored.
    try:
        await bob.send_to_group(group, "after removal", client_msg_id="late-post")
        error = await bob.wait_for(
            lambda e: isinstance(e, ErrorEvent) and e.ref == "late-post"
        )
        code = error.code
    except ChatError as exc:
        code = exc.code
    assert code == "not_a_member"
    await asyncio.sleep(0.3)
    assert "after removal" not in texts(alice, group)


async def test_member_posts_while_core_unreachable(
    group_mesh: Mesh, clients: Clients
) -> None:
    group = new_group()
    alice = await synced(clients, "alice", "eu-west")
    bob = await synced(clients, "bob", "us-east")
    await alice.group("create", group, members=["bob"])
    await alice.send_to_group(group, "before")
    await wait_text(bob, "before")
    # Past the edge's membership cache time, the edge would ask the core.
    await asyncio.sleep(MEMBER_TTL_S + 0.5)
    core = group_mesh.processes["core-0"]

    core.signal(signal.SIGSTOP)
    try:
        accepted = await alice.send_to_group(group, "while the core is away")
    finally:
        core.signal(signal.SIGCONT)

    assert accepted.duplicate is False
    await wait_text(bob, "while the core is away")
