"""Shared identifier types and the time-ordered 64-bit message id."""

from __future__ import annotations

import threading
import time
from typing import NewType

UserId = NewType("UserId", str)
ConversationId = NewType("ConversationId", str)
RegionName = NewType("RegionName", str)
EdgeName = NewType("EdgeName", str)
MessageId = NewType("MessageId", int)

# 2024-01-01T00:00:00Z in Unix milliseconds: ids fit 41 bits of milliseconds
# until the year 2093.
ID_EPOCH_MS = 1_704_067_200_000
WORKER_BITS = 10
COUNTER_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_COUNTER = (1 << COUNTER_BITS) - 1


def direct_conversation(a: UserId, b: UserId) -> ConversationId:
    """Return the id of the 1-1 conversation between two users (order-free)."""
    low, high = sorted((a, b))
    return ConversationId(f"dm:{low}:{high}")


def group_conversation(group: str) -> ConversationId:
    """Return the conversation id of a group."""
    return ConversationId(f"grp:{group}")


def conversation_members(conversation: ConversationId) -> tuple[UserId, ...]:
    """Return the two members of a 1-1 conversation id."""
    kind, _, rest = conversation.partition(":")
    if kind != "dm":
        raise ValueError(f"not a 1-1 conversation id: {conversation!r}")
    low, _, high = rest.partition(":")
    return (UserId(low), UserId(high))


class MessageIdGenerator:
    """Mint 64-bit ids: 41 bits of milliseconds, 10 of worker, 12 of counter.

    Ids from one generator strictly increase, also when the wall clock steps
    back: the generator keeps using its last millisecond until the clock
    catches up.
    """

    def __init__(self, worker: int, clock_ms: object = None) -> None:
        if not 0 <= worker <= MAX_WORKER:
            raise ValueError(f"worker id {worker} is outside 0..{MAX_WORKER}")
        self._worker = worker
        self._clock_ms = clock_ms if callable(clock_ms) else _wall_clock_ms
        self._last_ms = 0
        self._counter = 0
        self._lock = threading.Lock()

    def next_id(self) -> MessageId:
        with self._lock:
            now = max(int(self._clock_ms()) - ID_EPOCH_MS, self._last_ms)
            if now == self._last_ms:
                self._counter += 1
                if self._counter > MAX_COUNTER:
                    # 4096 ids in one millisecond: borrow the next millisecond.
                    now += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._last_ms = now
            return MessageId(
                (now << (WORKER_BITS + COUNTER_BITS))
                | (self._worker << COUNTER_BITS)
                | self._counter
            )


def message_id_time_ms(message_id: int) -> int:
    """Return the Unix time in milliseconds encoded in a message id."""
    return (message_id >> (WORKER_BITS + COUNTER_BITS)) + ID_EPOCH_MS


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
