"""The ScyllaDB backend across two datacenters: replication and a DC outage.

Runs on `cql_cluster_two_dc`: one Cassandra node in `eu-west` and one in
`us-east`, with a keyspace that keeps one replica in each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from core.errors import StoreError
from core.ids import ConversationId, UserId, direct_conversation
from core.schema import StoredMessage
from core.store.base import ConversationPosition
from core.store.cql_session import RetrySettings
from core.store.scylla import ScyllaStore

pytestmark = pytest.mark.cassandra

REPLICATION = {"eu-west": 1, "us-east": 1}
REPLICATION_TIMEOUT_S = 20.0

T = TypeVar("T")


def open_store(
    cluster: Any, keyspace: str, datacenter: str, **options: Any
) -> ScyllaStore:
    return ScyllaStore(
        contact_points=cluster.contact_points,
        port=cluster.port,
        keyspace=keyspace,
        local_datacenter=datacenter,
        replication=REPLICATION,
        **options,
    )


@pytest.fixture(scope="module")
def keyspace() -> str:
    """Return a keyspace name unique to this module's run."""
    return f"two_dc_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stores(
    cql_cluster_two_dc: Any, keyspace: str
) -> AsyncIterator[tuple[ScyllaStore, ScyllaStore]]:
    """Yield (eu-west store, us-east store) on the module's keyspace."""
    eu_west = open_store(cql_cluster_two_dc, keyspace, "eu-west")
    # Fails fast while its datacenter is down: two attempts of one second.
    us_east = open_store(
        cql_cluster_two_dc,
        keyspace,
        "us-east",
        request_timeout_s=1.0,
        retry=RetrySettings(max_attempts=2, base_delay_s=0.05),
    )
    await eu_west.ensure_schema()
    await us_east.ensure_schema()
    try:
        yield eu_west, us_east
    finally:
        await eu_west.close()
        await us_east.close()


def make_message(
    conversation: ConversationId, seq: int, sender: UserId
) -> StoredMessage:
    low, high = conversation.split(":")[1:]
    return StoredMessage(
        message_id=2_000_000 + seq,
        conversation=conversation,
        seq=seq,
        sender=sender,
        recipient=high if sender == low else low,
        content=f"two-dc message {seq} ✓",
        timestamp_ms=1_700_000_000_000 + seq,
        client_msg_id=f"two-dc-{seq}-{uuid.uuid4().hex[:8]}",
    )


async def eventually(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float
) -> T:
    """Repeat `read` until `done` accepts its result or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def users() -> tuple[UserId, UserId]:
    suffix = uuid.uuid4().hex[:8]
    return UserId(f"ana_{suffix}"), UserId(f"ben_{suffix}")


async def test_eu_write_readable_in_us(
    stores: tuple[ScyllaStore, ScyllaStore],
) -> None:
    eu_west, us_east = stores
    ana, ben = users()
    conversation = direct_conversation(ana, ben)
    message = make_message(conversation, 1, ana)
    await eu_west.append_message(message, [ana, ben])

    found = await eventually(
        lambda: us_east.fetch_by_client_id(ana, message.client_msg_id),
        lambda value: value is not None,
        REPLICATION_TIMEOUT_S,
    )

    assert found == message
    assert await us_east.fetch_latest(conversation, 10) == [message]
    assert await us_east.fetch_last_seq(conversation) == 1
    assert await us_east.fetch_conversations(ben) == {
        conversation: ConversationPosition(last_seq=1)
    }


async def test_eu_works_while_us_is_down(
    stores: tuple[ScyllaStore, ScyllaStore], cql_cluster_two_dc: Any
) -> None:
    eu_west, us_east = stores
    ana, ben = users()
    conversation = direct_conversation(ana, ben)
    first = make_message(conversation, 1, ana)
    await eu_west.append_message(first, [ana, ben])
    us_node = cql_cluster_two_dc.node_in("us-east").node

    us_node.pause()
    try:
        later = [make_message(conversation, seq, ana) for seq in range(2, 6)]
        for message in later:
            await eu_west.append_message(message, [ana, ben])

        assert await eu_west.fetch_latest(conversation, 10) == [first, *later]
        assert await eu_west.fetch_last_seq(conversation) == 5
        assert await eu_west.fetch_conversations(ben) == {
            conversation: ConversationPosition(last_seq=5)
        }
        found = await eu_west.fetch_by_client_id(ana, later[-1].client_msg_id)
        assert found == later[-1]
        with pytest.raises(StoreError):
            await us_east.fetch_last_seq(conversation)
    finally:
        us_node.resume()
