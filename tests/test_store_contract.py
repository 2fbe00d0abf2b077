"""The `MessageStore` contract, run against every backend.

The SQLite backend is the reference. The Cassandra runs use a real node from
`tests.cql_fixtures`, one keyspace per module and unique ids per test, and a
bucket size of 4 so that short conversations span several partitions.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import StoreError
from core.ids import ConversationId, UserId, direct_conversation, group_conversation
from core.schema import GroupRole, MessageKind, StoredMessage
from core.store.base import (
    MAX_CONTENT_BYTES,
    ConversationPosition,
    GroupRecord,
    MemberChange,
    MessageStore,
)
from core.store.cql_migrations import MIGRATIONS, migrate
from core.store.factory import open_store
from core.store.scylla import ScyllaStore
from core.store.sqlite import SqliteStore
from topology.model import Edge, Region, Store
from topology.model import ScyllaStore as ScyllaSettings

TEST_BUCKET_SIZE = 4

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("cassandra", id="cassandra", marks=pytest.mark.cassandra),
]


@pytest.fixture(scope="module")
def cassandra_keyspace() -> str:
    """Return a keyspace name unique to this module's run."""
    return f"contract_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MessageStore]:
    """Yield a store with its schema in place, closed after the test."""
    opened: MessageStore
    if backend == "sqlite":
        opened = SqliteStore(tmp_path / "store.db")
    else:
        node = request.getfixturevalue("cql_node")
        opened = ScyllaStore(
            contact_points=[node.contact_point],
            port=node.port,
            keyspace=request.getfixturevalue("cassandra_keyspace"),
            local_datacenter=node.datacenter,
            replication={node.datacenter: 1},
            bucket_size=TEST_BUCKET_SIZE,
        )
    await opened.ensure_schema()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def names() -> Iterator[dict[str, UserId]]:
    """Return user ids unique to one test, so tests can share a keyspace."""
    suffix = uuid.uuid4().hex[:10]
    yield {name: UserId(f"{name}_{suffix}") for name in ("alice", "bob", "carol")}


def make_message(
    conversation: ConversationId,
    seq: int,
    sender: UserId,
    recipient: UserId | None,
    content: str | None = None,
    client_msg_id: str | None = None,
) -> StoredMessage:
    return StoredMessage(
        message_id=1_000_000 + seq,
        conversation=conversation,
        seq=seq,
        sender=sender,
        recipient=recipient,
        content=f"message {seq}" if content is None else content,
        timestamp_ms=1_700_000_000_000 + seq,
        client_msg_id=client_msg_id or f"c{seq}-{uuid.uuid4().hex[:8]}",
    )


async def append_range(
    store: MessageStore, conversation: ConversationId, sender: UserId, last: int
) -> list[StoredMessage]:
    """Append messages 1..last of a 1-1 conversation and return them."""
    members = _members(conversation)
    recipient = next(user for user in members if user != sender)
    messages = [
        make_message(conversation, seq, sender, recipient) for seq in range(1, last + 1)
    ]
    for message in messages:
        await store.append_message(message, members)
    return messages


def _members(conversation: ConversationId) -> list[UserId]:
    _, low, high = conversation.split(":")
    return [UserId(low), UserId(high)]


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [message.seq for message in messages]


def at(
    last_seq: int, from_seq: int = 1, until_seq: int | None = None
) -> ConversationPosition:
    return ConversationPosition(
        last_seq=last_seq, from_seq=from_seq, until_seq=until_seq
    )


async def test_register_user_idempotent(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    assert not await store.user_exists(alice)
    await store.register_user(alice)
    await store.register_user(alice)
    assert await store.user_exists(alice)
    assert not await store.user_exists(bob)


async def test_append_then_fetch_by_client_id(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    message = make_message(conversation, 1, alice, bob, client_msg_id="send-1")
    await store.append_message(message, [alice, bob])

    assert await store.fetch_by_client_id(alice, "send-1") == message
    assert await store.fetch_by_client_id(alice, "send-2") is None
    assert await store.fetch_by_client_id(bob, "send-1") is None


async def test_append_messages_stores_batch(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob, carol = names["alice"], names["bob"], names["carol"]
    with_bob = direct_conversation(alice, bob)
    with_carol = direct_conversation(alice, carol)
    batch = [
        (make_message(with_bob, 1, alice, bob), [alice, bob]),
        (make_message(with_carol, 1, alice, carol), [alice, carol]),
        (make_message(with_bob, 2, bob, alice), [alice, bob]),
    ]
    await store.append_messages(batch)
    await store.append_messages(batch)

    assert seqs(await store.fetch_messages_after(with_bob, 0, 10)) == [1, 2]
    assert seqs(await store.fetch_messages_after(with_carol, 0, 10)) == [1]
    assert await store.fetch_last_seq(with_bob) == 2
    assert await store.fetch_conversations(alice) == {
        with_bob: at(2),
        with_carol: at(1),
    }
    assert await store.fetch_conversations(carol) == {with_carol: at(1)}


async def test_fetch_by_client_ids_returns_stored_only(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    first = make_message(conversation, 1, alice, bob, client_msg_id="k-1")
    second = make_message(conversation, 2, bob, alice, client_msg_id="k-1")
    await store.append_messages([(first, [alice, bob]), (second, [alice, bob])])

    found = await store.fetch_by_client_ids(
        [(alice, "k-1"), (bob, "k-1"), (alice, "k-2"), (alice, "k-1")]
    )

    assert found == {(alice, "k-1"): first, (bob, "k-1"): second}


async def test_group_message_without_recipient(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    members = list(names.values())
    conversation = ConversationId(f"grp:{uuid.uuid4().hex[:12]}")
    message = make_message(conversation, 1, members[0], None, client_msg_id="g-1")
    await store.append_message(message, members)

    stored = await store.fetch_by_client_id(members[0], "g-1")
    assert stored == message
    assert stored is not None
    assert stored.recipient is None
    for user in members:
        assert await store.fetch_conversations(user) == {conversation: at(1)}


async def test_replayed_append_stores_once(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    message = make_message(conversation, 1, alice, bob)
    await store.append_message(message, [alice, bob])
    await store.append_message(message, [alice, bob])

    assert await store.fetch_messages_after(conversation, 0, 10) == [message]
    assert await store.fetch_latest(conversation, 10) == [message]
    assert await store.fetch_last_seq(conversation) == 1
    assert await store.fetch_conversations(alice) == {conversation: at(1)}
    assert await store.fetch_by_client_id(alice, message.client_msg_id) == message


async def test_older_replay_keeps_last_seq(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    first, _second = await append_range(store, conversation, alice, 2)
    await store.append_message(first, [alice, bob])

    assert await store.fetch_last_seq(conversation) == 2
    assert await store.fetch_conversations(alice) == {conversation: at(2)}
    assert await store.fetch_conversations(bob) == {conversation: at(2)}
    assert seqs(await store.fetch_messages_after(conversation, 0, 10)) == [1, 2]


async def test_last_seq(store: MessageStore, names: dict[str, UserId]) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    assert await store.fetch_last_seq(conversation) == 0
    await append_range(store, conversation, alice, 3)
    assert await store.fetch_last_seq(conversation) == 3


async def test_conversations_for_both_members(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob, carol = names["alice"], names["bob"], names["carol"]
    with_bob = direct_conversation(alice, bob)
    with_carol = direct_conversation(alice, carol)
    await append_range(store, with_bob, alice, 3)
    await append_range(store, with_carol, carol, 5)

    assert await store.fetch_conversations(alice) == {
        with_bob: at(3),
        with_carol: at(5),
    }
    assert await store.fetch_conversations(bob) == {with_bob: at(3)}
    assert await store.fetch_conversations(carol) == {with_carol: at(5)}
    assert await store.fetch_conversations(UserId(f"{alice}_nobody")) == {}


@pytest.mark.parametrize(
    ("after_seq", "limit", "expected"),
    [
        (0, 100, list(range(1, 11))),  # every bucket: seqs 1-3, 4-7, 8-10
        (2, 5, [3, 4, 5, 6, 7]),  # starts in bucket 0, ends in bucket 1
        (3, 4, [4, 5, 6, 7]),  # exactly one whole bucket
        (3, 1, [4]),
        (7, 10, [8, 9, 10]),  # bucket boundary as the cursor
        (6, 2, [7, 8]),
        (9, 10, [10]),
        (10, 10, []),
        (50, 10, []),
        (0, 0, []),
    ],
)
async def test_messages_after_across_buckets(
    store: MessageStore,
    names: dict[str, UserId],
    after_seq: int,
    limit: int,
    expected: list[int],
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    messages = await append_range(store, conversation, alice, 10)

    fetched = await store.fetch_messages_after(conversation, after_seq, limit)

    assert seqs(fetched) == expected
    assert fetched == [messages[seq - 1] for seq in expected]


async def test_latest_order_and_limit(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    messages = await append_range(store, conversation, alice, 10)

    assert seqs(await store.fetch_latest(conversation, 3)) == [8, 9, 10]
    assert seqs(await store.fetch_latest(conversation, 5)) == [6, 7, 8, 9, 10]
    assert seqs(await store.fetch_latest(conversation, 7)) == list(range(4, 11))
    assert await store.fetch_latest(conversation, 100) == messages
    assert await store.fetch_latest(conversation, 0) == []
    unknown = direct_conversation(alice, names["carol"])
    assert await store.fetch_latest(unknown, 10) == []


UNICODE_CONTENTS = [
    "héllo wörld",
    "日本語のメッセージ",
    "مرحبا بالعالم",
    "emoji 👩‍👩‍👧 🏳️‍🌈 and flags 🇯🇵",
    "combining: e\u0301 a\u0308",
    "tab\tnewline\nquote' double\" backslash\\ nul\x00 end",
    "",
    "é" * (MAX_CONTENT_BYTES // 2),  # exactly the maximum size in UTF-8
]


async def test_unicode_content_round_trip(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    messages = [
        make_message(conversation, seq, alice, bob, content=content)
        for seq, content in enumerate(UNICODE_CONTENTS, start=1)
    ]
    for message in messages:
        await store.append_message(message, [alice, bob])

    stored = await store.fetch_messages_after(conversation, 0, 100)
    assert [m.content for m in stored] == UNICODE_CONTENTS
    assert stored == messages
    for message in messages:
        found = await store.fetch_by_client_id(alice, message.client_msg_id)
        assert found == message


async def assert_nothing_stored(
    store: MessageStore, message: StoredMessage, members: list[UserId]
) -> None:
    conversation = ConversationId(message.conversation)
    sender = UserId(message.sender)
    assert await store.fetch_by_client_id(sender, message.client_msg_id) is None
    assert await store.fetch_last_seq(conversation) == 0
    assert await store.fetch_messages_after(conversation, 0, 10) == []
    assert await store.fetch_latest(conversation, 10) == []
    for user in members:
        assert await store.fetch_conversations(user) == {}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("lone high surrogate \ud800", id="high-surrogate"),
        pytest.param("lone low surrogate \udfff end", id="low-surrogate"),
        pytest.param("\udcff", id="surrogateescape-byte"),
    ],
)
async def test_invalid_utf8_rejected(
    store: MessageStore, names: dict[str, UserId], content: str
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    message = make_message(conversation, 1, alice, bob, content=content)

    with pytest.raises(ValueError):
        await store.append_message(message, [alice, bob])

    await assert_nothing_stored(store, message, [alice, bob])


async def test_oversized_content_rejected(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    conversation = direct_conversation(alice, bob)
    too_large = "é" * (MAX_CONTENT_BYTES // 2) + "x"  # one byte over
    message = make_message(conversation, 1, alice, bob, content=too_large)

    with pytest.raises(ValueError):
        await store.append_message(message, [alice, bob])

    await assert_nothing_stored(store, message, [alice, bob])


async def test_large_group_lists_every_member(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    # 3000 member rows are about 300 KB, more than one batch may carry.
    members = [UserId(f"{names['alice']}_member_{i:04d}") for i in range(3000)]
    conversation = ConversationId(f"grp:{uuid.uuid4().hex[:12]}")
    message = make_message(conversation, 1, members[0], None, content="x" * 60_000)

    await store.append_message(message, members)

    assert await store.fetch_by_client_id(members[0], message.client_msg_id) == message
    assert await store.fetch_last_seq(conversation) == 1
    for user in (members[0], members[1], members[1500], members[-1]):
        assert await store.fetch_conversations(user) == {conversation: at(1)}


# ---- last seen ----------------------------------------------------------------


async def test_last_seen_keeps_latest(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob, carol = names["alice"], names["bob"], names["carol"]
    for user in (alice, bob, carol):
        await store.register_user(user)
    assert await store.fetch_last_seen([alice, bob]) == {}

    await store.record_last_seen({alice: 1_000, bob: 2_000})
    await store.record_last_seen({alice: 5_000})
    await store.record_last_seen({alice: 3_000, bob: 1_500})

    assert await store.fetch_last_seen([alice, bob, carol]) == {
        alice: 5_000,
        bob: 2_000,
    }
    assert await store.fetch_last_seen([]) == {}
    await store.record_last_seen({})


# ---- groups -------------------------------------------------------------------


def new_group(owner: UserId) -> GroupRecord:
    return GroupRecord(
        group=f"g{uuid.uuid4().hex[:12]}",
        name="Trip planning ✈",
        owner=owner,
        created_ms=1_700_000_000_000,
    )


def member_event(
    group: str,
    seq: int,
    actor: UserId,
    target: UserId,
    kind: MessageKind,
    content: str = "",
) -> StoredMessage:
    return StoredMessage(
        message_id=5_000_000 + seq,
        conversation=group_conversation(group),
        seq=seq,
        sender=actor,
        recipient=None,
        content=content,
        timestamp_ms=1_700_000_000_000 + seq,
        client_msg_id=f"m{seq}-{uuid.uuid4().hex[:8]}",
        kind=kind,
        target=target,
    )


async def change_member(
    store: MessageStore,
    group: str,
    seq: int,
    user: UserId,
    role: GroupRole | None,
    actor: UserId,
) -> StoredMessage:
    """Apply one membership change as the sequencer would; return its event."""
    kind: MessageKind = "member_removed" if role is None else "member_added"
    event = member_event(group, seq, actor, user, kind, content=role or "")
    change = MemberChange(group=group, user=user, role=role, seq=seq)
    await store.apply_member_change(event, change)
    return event


async def test_create_group_once(store: MessageStore, names: dict[str, UserId]) -> None:
    record = new_group(names["alice"])
    renamed = GroupRecord(record.group, "other name", names["bob"], 1)

    assert await store.create_group(record) is True
    assert await store.create_group(record) is False
    assert await store.create_group(renamed) is False
    assert await store.fetch_group(record.group) == record
    assert await store.fetch_group(f"{record.group}x") is None


async def test_member_changes_update_lists(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob, carol = names["alice"], names["bob"], names["carol"]
    record = new_group(alice)
    group = record.group
    conversation = group_conversation(group)
    await store.create_group(record)

    await change_member(store, group, 1, alice, "owner", alice)
    await change_member(store, group, 2, bob, "member", alice)
    text = make_message(conversation, 3, bob, None, content="hi all")
    await store.append_message(text, [])
    await change_member(store, group, 4, carol, "member", alice)

    assert await store.fetch_members(group) == {
        alice: "owner",
        bob: "member",
        carol: "member",
    }
    assert await store.fetch_groups_of(bob) == {group: "member"}
    assert await store.fetch_groups_of(alice) == {group: "owner"}
    assert await store.fetch_conversations(alice) == {conversation: at(4, 1)}
    assert await store.fetch_conversations(bob) == {conversation: at(4, 2)}
    assert await store.fetch_conversations(carol) == {conversation: at(4, 4)}
    history = await store.fetch_messages_after(conversation, 0, 10)
    assert seqs(history) == [1, 2, 3, 4]
    assert history[1].kind == "member_added"
    assert history[1].target == bob
    assert history[2] == text


async def test_member_removed_then_readded(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    record = new_group(alice)
    group = record.group
    conversation = group_conversation(group)
    await store.create_group(record)
    await change_member(store, group, 1, alice, "owner", alice)
    await change_member(store, group, 2, bob, "member", alice)

    await change_member(store, group, 3, bob, None, alice)

    assert await store.fetch_members(group) == {alice: "owner"}
    assert await store.fetch_groups_of(bob) == {}
    assert await store.fetch_conversations(bob) == {conversation: at(3, 2, 3)}

    await change_member(store, group, 4, bob, "admin", alice)

    assert await store.fetch_members(group) == {alice: "owner", bob: "admin"}
    assert await store.fetch_groups_of(bob) == {group: "admin"}
    assert await store.fetch_conversations(bob) == {conversation: at(4, 4)}


async def test_role_change_keeps_from_seq(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    record = new_group(alice)
    group = record.group
    conversation = group_conversation(group)
    await store.create_group(record)
    await change_member(store, group, 1, alice, "owner", alice)
    await change_member(store, group, 2, bob, "member", alice)

    await change_member(store, group, 3, bob, "admin", alice)

    assert await store.fetch_members(group) == {alice: "owner", bob: "admin"}
    assert await store.fetch_conversations(bob) == {conversation: at(3, 2)}


async def test_replayed_member_change_once(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, bob = names["alice"], names["bob"]
    record = new_group(alice)
    group = record.group
    conversation = group_conversation(group)
    await store.create_group(record)
    await change_member(store, group, 1, alice, "owner", alice)
    event = await change_member(store, group, 2, bob, "member", alice)

    await store.apply_member_change(event, MemberChange(group, bob, "member", 2))

    assert await store.fetch_members(group) == {alice: "owner", bob: "member"}
    assert await store.fetch_conversations(bob) == {conversation: at(2, 2)}
    assert seqs(await store.fetch_messages_after(conversation, 0, 10)) == [1, 2]
    assert await store.fetch_by_client_id(alice, event.client_msg_id) == event


async def test_removing_non_member_adds_nothing(
    store: MessageStore, names: dict[str, UserId]
) -> None:
    alice, carol = names["alice"], names["carol"]
    record = new_group(alice)
    group = record.group
    await store.create_group(record)
    await change_member(store, group, 1, alice, "owner", alice)

    await change_member(store, group, 2, carol, None, alice)

    assert await store.fetch_conversations(carol) == {}
    assert await store.fetch_groups_of(carol) == {}
    assert await store.fetch_members(group) == {alice: "owner"}


# ---- ScyllaDB only: migrations, settings and the factory --------------------


def scylla_regions(*names: str) -> list[Region]:
    return [Region(name=name, edges=[Edge(name=f"{name}-1")]) for name in names]


@pytest.mark.cassandra
async def test_migrate_twice_applies_once(cql_node: Any) -> None:
    settings = ScyllaSettings(
        contact_points=[cql_node.contact_point],
        port=cql_node.port,
        keyspace=f"migrate{uuid.uuid4().hex[:12]}",
    )
    regions = scylla_regions(cql_node.datacenter)

    first = await migrate(settings, regions, cql_node.datacenter)
    second = await migrate(settings, regions, cql_node.datacenter)

    assert [m.version for m in first] == [m.version for m in MIGRATIONS]
    assert second == []


@pytest.mark.cassandra
async def test_bucket_size_change_rejected(cql_node: Any) -> None:
    keyspace = f"buckets_{uuid.uuid4().hex[:12]}"

    def open_with(bucket_size: int) -> ScyllaStore:
        return ScyllaStore(
            contact_points=[cql_node.contact_point],
            port=cql_node.port,
            keyspace=keyspace,
            local_datacenter=cql_node.datacenter,
            replication={cql_node.datacenter: 1},
            bucket_size=bucket_size,
        )

    first = open_with(TEST_BUCKET_SIZE)
    await first.ensure_schema()
    await first.close()
    changed = open_with(TEST_BUCKET_SIZE + 1)
    try:
        with pytest.raises(StoreError, match=f"bucket_size={TEST_BUCKET_SIZE}"):
            await changed.ensure_schema()
    finally:
        await changed.close()


def test_factory_opens_each_backend(tmp_path: Path) -> None:
    regions = scylla_regions("eu-west", "us-east")

    sqlite = open_store(Store(sqlite_path="chat.db"), regions, "us-east", tmp_path)
    scylla = open_store(Store(backend="scylla"), regions, "us-east", tmp_path)

    assert isinstance(sqlite, SqliteStore)
    assert isinstance(scylla, ScyllaStore)
    with pytest.raises(ValueError, match="ap-south"):
        open_store(Store(), regions, "ap-south", tmp_path)


@pytest.mark.cassandra
async def test_late_replay_keeps_newer_membership(
    cql_node: Any, cassandra_keyspace: str, names: dict[str, UserId]
) -> None:
    # Membership writes are timestamped with their seq, so replaying the
    # add at seq 2 after the removal at seq 3 changes nothing. SQLite applies
    # changes in call order and would re-add the member.
    store = ScyllaStore(
        contact_points=[cql_node.contact_point],
        port=cql_node.port,
        keyspace=cassandra_keyspace,
        local_datacenter=cql_node.datacenter,
        replication={cql_node.datacenter: 1},
        bucket_size=TEST_BUCKET_SIZE,
    )
    alice, bob = names["alice"], names["bob"]
    record = new_group(alice)
    group = record.group
    try:
        await store.ensure_schema()
        await store.create_group(record)
        await change_member(store, group, 1, alice, "owner", alice)
        added = await change_member(store, group, 2, bob, "member", alice)
        await change_member(store, group, 3, bob, None, alice)

        await store.apply_member_change(added, MemberChange(group, bob, "member", 2))

        assert await store.fetch_members(group) == {alice: "owner"}
        assert await store.fetch_groups_of(bob) == {}
        assert await store.fetch_conversations(bob) == {
            group_conversation(group): at(3, 2, 3)
        }
    finally:
        await store.close()
