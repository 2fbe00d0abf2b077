"""The checks and figures of one chaos run, from the load's ledger and clients.

- lost: accepted messages that their recipient never showed, even after a
  final sync;
- duplicates: a message, or a conversation's sequence, shown twice to one
  client;
- order violations: a client showing a conversation's sequences out of
  order, two clients showing different messages at one sequence, or a
  sender's messages committed in another order than they were sent;
- resume: from the fault to a synced session, for each session the fault
  ended;
- back home: from the end of the fault until a client that moved is
  connected in its nearest region again;
- catch-up: from the end of the fault until recipients showed every message
  accepted before it;
- late: accepted messages that their recipient had not shown, without a
  sync, by the end of the settle timeout;
- presence convergence: from the end of the fault until every user's
  partners are shown online in the region they are connected to.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from chatmesh.chaos.load import Load, LoadUser, SentMessage
from chatmesh.client import ChatError

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.25
PRESENCE_POLL_INTERVAL_S = 0.5
# Sessions lost this long before the fault's recorded start still count as
# ended by it: the fault begins just before its start is recorded.
FAULT_START_SLACK_S = 0.5


@dataclass(frozen=True)
class FaultWindow:
    """When a fault began and ended (`time.monotonic()`), and what it was."""

    description: str
    started_at: float
    ended_at: float


@dataclass(frozen=True)
class Ordering:
    """The order violations found, by kind."""

    regressions: int
    conflicts: int
    sender_inversions: int

    @property
    def total(self) -> int:
        return self.regressions + self.conflicts + self.sender_inversions


@dataclass(frozen=True)
class Resumes:
    """The sessions that a fault ended, and how they resumed."""

    sessions_lost: int
    moved_region: int
    resume_s: list[float]
    back_home_s: list[float]
    not_resumed: int


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of `values`, or None when empty.

    With fewer than 100 values, the 99th percentile is the maximum.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def by_user(load: Load) -> dict[str, LoadUser]:
    return {user.name: user for user in load.users}


def acknowledged(load: Load) -> list[SentMessage]:
    return [m for m in load.ledger if m.accepted_at is not None]


def find_lost(load: Load) -> list[SentMessage]:
    """Return the accepted messages that their recipient has not shown."""
    users = by_user(load)
    shown = {
        name: {(m.sender, m.client_msg_id) for m in user.client.shown}
        for name, user in users.items()
    }
    return [
        m
        for m in acknowledged(load)
        if (m.sender, m.client_msg_id) not in shown[m.recipient]
    ]


def count_duplicates(load: Load) -> int:
    """Count messages and sequences shown more than once, over all clients."""
    duplicates = 0
    for user in load.users:
        messages = Counter((m.sender, m.client_msg_id) for m in user.client.shown)
        sequences = Counter((m.conversation, m.seq) for m in user.client.shown)
        duplicates += sum(n - 1 for n in messages.values() if n > 1)
        duplicates += sum(n - 1 for n in sequences.values() if n > 1)
    return duplicates


def check_order(load: Load) -> Ordering:
    """Find the order violations of a run; see the module's docstring."""
    regressions = 0
    at_sequence: dict[tuple[str, int], set[str]] = defaultdict(set)
    sequence_of: dict[tuple[str, str], int] = {}
    for user in load.users:
        last_seq: dict[str, int] = {}
        for message in user.client.shown:
            if message.seq <= last_seq.get(message.conversation, 0):
                regressions += 1
            last_seq[message.conversation] = message.seq
            at_sequence[(message.conversation, message.seq)].add(message.message_id)
            sequence_of[(message.sender, message.client_msg_id)] = message.seq
    conflicts = sum(1 for ids in at_sequence.values() if len(ids) > 1)
    return Ordering(regressions, conflicts, _sender_inversions(load, sequence_of))


def _sender_inversions(load: Load, sequence_of: dict[tuple[str, str], int]) -> int:
    """Count a sender's accepted messages committed before an earlier one."""
    inversions = 0
    sent: dict[tuple[str, str], list[SentMessage]] = defaultdict(list)
    for message in acknowledged(load):
        sent[(message.sender, message.recipient)].append(message)
    for messages in sent.values():
        seqs = [
            sequence_of.get((m.sender, m.client_msg_id))
            for m in sorted(messages, key=lambda m: m.index)
        ]
        known = [seq for seq in seqs if seq is not None]
        inversions += sum(1 for a, b in itertools.pairwise(known) if b < a)
    return inversions


def resumes(load: Load, window: FaultWindow) -> Resumes:
    """Collect the sessions the fault ended and how long each took to resume."""
    lost = moved = not_resumed = 0
    resume_s: list[float] = []
    back_home_s: list[float] = []
    for user in load.users:
        for resumption in user.client.resumptions:
            if resumption.reason == "failback":
                if (
                    resumption.to_region == user.home_region
                    and resumption.connected_at >= window.ended_at
                ):
                    back_home_s.append(resumption.connected_at - window.ended_at)
                continue
            if resumption.reason == "start" or not _during(resumption.lost_at, window):
                continue
            lost += 1
            if resumption.to_region != resumption.from_region:
                moved += 1
            if resumption.synced_at is None:
                not_resumed += 1
            else:
                resume_s.append(resumption.synced_at - window.started_at)
    return Resumes(lost, moved, resume_s, back_home_s, not_resumed)


def _during(moment: float, window: FaultWindow) -> bool:
    return window.started_at - FAULT_START_SLACK_S <= moment <= window.ended_at


async def wait_caught_up(
    load: Load, window: FaultWindow, timeout_s: float
) -> float | None:
    """Wait until recipients showed every message accepted before the fault ended.

    Returns the seconds from the fault's end to the last of those shown, or
    None if they were not all shown within `timeout_s` without a sync.
    """
    due = [
        m
        for m in acknowledged(load)
        if m.accepted_at is not None and m.accepted_at <= window.ended_at
    ]
    last = await wait_shown(load, due, timeout_s)
    return None if last is None else max(0.0, last - window.ended_at)


async def count_late(load: Load, timeout_s: float) -> int:
    """Wait until recipients showed every accepted message; count those still missing.

    Call it after the load stopped. A message missing after `timeout_s`
    reached its recipient late or, if the final sync does not bring it
    either, never.
    """
    due = acknowledged(load)
    if await wait_shown(load, due, timeout_s) is not None:
        return 0
    users = by_user(load)
    return sum(
        1 for m in due if (m.sender, m.client_msg_id) not in users[m.recipient].shown_at
    )


async def wait_shown(
    load: Load, messages: list[SentMessage], timeout_s: float
) -> float | None:
    """Return when the last of `messages` was shown, once all have been.

    Returns None if they were not all shown within `timeout_s`.
    """
    users = by_user(load)
    deadline = time.monotonic() + timeout_s
    while True:
        shown = [
            users[m.recipient].shown_at.get((m.sender, m.client_msg_id))
            for m in messages
        ]
        if all(at is not None for at in shown):
            return max((at for at in shown if at is not None), default=0.0)
        if time.monotonic() > deadline:
            missing = sum(1 for at in shown if at is None)
            log.warning("chaos.not_shown", missing=missing, timeout_s=timeout_s)
            return None
        await asyncio.sleep(POLL_INTERVAL_S)


async def wait_back_home(load: Load, timeout_s: float) -> int:
    """Wait until every user is connected in its home region again.

    Returns how many users are still elsewhere after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        away = [u.name for u in load.users if u.client.region != u.home_region]
        if not away or time.monotonic() > deadline:
            if away:
                log.warning("chaos.not_back_home", users=away, timeout_s=timeout_s)
            return len(away)
        await asyncio.sleep(POLL_INTERVAL_S)


async def wait_presence_converged(
    load: Load, since: float, timeout_s: float
) -> float | None:
    """Return the seconds from `since` until every user's partners show online.

    Online must be reported in the region where the partner is connected.
    Returns None if that does not happen within `timeout_s`.
    """
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        results = await asyncio.gather(*(_partners_seen(load, u) for u in load.users))
        if all(results):
            return max(0.0, started - since)
        await asyncio.sleep(PRESENCE_POLL_INTERVAL_S)
    log.warning("chaos.presence_not_converged", timeout_s=timeout_s)
    return None


async def _partners_seen(load: Load, user: LoadUser) -> bool:
    users = by_user(load)
    try:
        async with asyncio.timeout(2.0):
            states = await user.client.presence(list(user.partners))
    except (ChatError, TimeoutError):
        return False
    for state in states:
        partner_region = users[state.user].client.region
        if not state.online or partner_region is None:
            return False
        if state.region != partner_region:
            return False
    return len(states) == len(user.partners)


def delivery_latencies(load: Load) -> list[float]:
    """Return, per accepted message, the seconds from accepted to shown."""
    users = by_user(load)
    latencies = []
    for message in acknowledged(load):
        shown_at = users[message.recipient].shown_at.get(
            (message.sender, message.client_msg_id)
        )
        if shown_at is not None and message.accepted_at is not None:
            latencies.append(max(0.0, shown_at - message.accepted_at))
    return latencies
