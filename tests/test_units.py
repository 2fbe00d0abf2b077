"""Pure logic: ids, affinity, the session registry, tokens, catch-up paging."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.catchup import fetch_sync_page
from core.ids import (
    ID_EPOCH_MS,
    MessageIdGenerator,
    UserId,
    conversation_members,
    direct_conversation,
    message_id_time_ms,
)
from core.schema import StoredMessage, SyncRequest
from core.store.sqlite import SqliteStore
from edge.affinity import owner_edge
from edge.uncommitted import UncommittedPosts
from topology.launcher import free_port


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_message_ids_increase_when_clock_steps_back() -> None:
    clock = FakeClock(ID_EPOCH_MS + 5000)
    ids = MessageIdGenerator(3, clock_ms=clock)
    first = ids.next_id()
    clock.now -= 1000
    second = ids.next_id()
    assert second > first
    assert message_id_time_ms(first) == ID_EPOCH_MS + 5000


def test_message_ids_borrow_next_ms_after_4096() -> None:
    ids = MessageIdGenerator(0, clock_ms=FakeClock(ID_EPOCH_MS + 1))
    made = [ids.next_id() for _ in range(5000)]
    assert made == sorted(made)
    assert len(set(made)) == 5000


def test_worker_id_out_of_range() -> None:
    with pytest.raises(ValueError, match="worker id 1024"):
        MessageIdGenerator(1024)


def test_direct_conversation_is_order_free() -> None:
    a, b = UserId("bob"), UserId("alice")
    assert direct_conversation(a, b) == direct_conversation(b, a) == "dm:alice:bob"
    assert conversation_members(direct_conversation(a, b)) == ("alice", "bob")


def test_affinity_is_stable_and_moves_only_removed_edge_users() -> None:
    edges = ["e1", "e2", "e3"]
    users = [f"user{i}" for i in range(600)]
    owners = {u: owner_edge(u, edges) for u in users}
    counts = {e: list(owners.values()).count(e) for e in edges}
    assert all(count > 120 for count in counts.values()), counts
    after = {u: owner_edge(u, ["e1", "e3"]) for u in users}
    moved = [u for u in users if owners[u] != after[u]]
    assert all(owners[u] == "e2" for u in moved)


async def test_sync_pages_in_order_and_only_own_conversations(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.ensure_schema()
    for seq in range(1, 8):
        await _append(store, "dm:alice:bob", seq, "alice", "bob")
    await _append(store, "dm:carol:dave", 1, "carol", "dave")

    first = await fetch_sync_page(
        store, SyncRequest(user="bob", cursors={"dm:carol:dave": 0}, limit=5)
    )
    second = await fetch_sync_page(
        store, SyncRequest(user="bob", cursors=first.cursors, limit=5)
    )
    await store.close()

    assert [m.seq for m in first.messages] == [1, 2, 3, 4, 5]
    assert first.more is True
    assert [m.seq for m in second.messages] == [6, 7]
    assert second.more is False
    assert set(second.cursors) == {"dm:alice:bob"}


async def _append(
    store: SqliteStore, conversation: str, seq: int, sender: str, recipient: str
) -> None:
    message = StoredMessage(
        message_id=seq,
        conversation=conversation,
        seq=seq,
        sender=sender,
        recipient=recipient,
        content=f"m{seq}",
        timestamp_ms=seq,
        client_msg_id=f"{conversation}-{seq}".replace(":", "-"),
    )
    await store.append_message(message, [UserId(sender), UserId(recipient)])


async def test_uncommitted_posts_wait_for_settle() -> None:
    posts = UncommittedPosts()
    assert await posts.drained("alice", "g", timeout_s=0.01)

    posts.add("alice", "g", "m1")
    posts.add("alice", "g", "m2")
    posts.add("alice", "h", "m3")
    posts.add("bob", "g", "m1")
    waiter = asyncio.create_task(posts.drained("alice", "g", timeout_s=5.0))
    posts.settle("alice", "m1")
    await asyncio.sleep(0)
    assert not waiter.done()
    posts.settle("alice", "m2")

    assert await waiter
    assert posts.count("alice") == 1
    assert posts.count("bob") == 1


async def test_uncommitted_posts_forgotten_after_timeout() -> None:
    posts = UncommittedPosts(forget_after_s=0.05)
    posts.add("alice", "g", "lost")

    assert not await posts.drained("alice", "g", timeout_s=0.01)
    assert posts.count("alice") == 0
    posts.add("alice", "g", "old")
    await asyncio.sleep(0.06)
    posts.add("alice", "g", "new")
    assert posts.count("alice") == 1
    posts.clear()
    assert await posts.drained("alice", "g", timeout_s=0.01)


def test_free_port_never_repeats() -> None:
    # 500 draws from the kernel's ephemeral range would repeat a port a few
    # times if each draw were independent.
    ports = [free_port() for _ in range(500)]

    assert len(set(ports)) == len(ports)
