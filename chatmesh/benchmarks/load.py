"""Drive a message workload through bench clients and time every receipt.

Each client sends 1-1 messages to random other users and, with probability
`group_share`, messages to its group. Sends run flat out (each client keeps
`window` messages awaiting `accepted`) or paced at a total `rate`. Sends in
the first `warmup_s` are not measured. Sending stops after `warmup_s +
duration_s`, and then the run waits up to `drain_s` for measured messages
still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from chatmesh.benchmarks.clients import BenchClient, stamped_content

PROGRESS_INTERVAL_S = 1.0
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class Workload:
    """The load: its rate, duration, window, message mix and content size."""

    duration_s: float
    warmup_s: float
    rate: float  # messages/s over all clients; 0 sends flat out
    window: int
    group_share: float
    content_bytes: int
    drain_s: float
    seed: int = 1


@dataclass
class Tally:
    """Counts and latencies of one run; latencies are in ms."""

    sent: int = 0
    measured_sent: int = 0
    accepted: int = 0
    committed: int = 0
    receipts: int = 0
    expected_receipts: int = 0
    completed: int = 0
    # Receipts, and messages whose last receipt came, inside the measured window.
    window_receipts: int = 0
    window_completed: int = 0
    pongs: int = 0
    missed_slots: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    receipt_ms: list[float] = field(default_factory=list)
    accept_ms: list[float] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)


class LoadRecorder:
    """Match accepted, committed and received events to the sends that caused them."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.measure_from_ns = 0
        self.measure_until_ns = 0
        # ref -> (send time, receipts still expected) for measured messages
        self._open: dict[str, tuple[int, int]] = {}
        self._sent_at: dict[str, int] = {}
        self._drained = asyncio.Event()
        # Warm-up messages: receipts still expected, to count those completed
        # inside the window.
        self._open_before: dict[str, int] = {}

    def measured(self, sent_ns: int) -> bool:
        return self.measure_from_ns <= sent_ns < self.measure_until_ns

    def on_sent(self, ref: str, sent_ns: int, receipts: int) -> None:
        self.tally.sent += 1
        self._sent_at[ref] = sent_ns
        if sent_ns < self.measure_from_ns:
            self._open_before[ref] = receipts
        elif self.measured(sent_ns):
            self.tally.measured_sent += 1
            self.tally.expected_receipts += receipts
            self._open[ref] = (sent_ns, receipts)

    def on_accepted(self, ref: str, now_ns: int) -> None:
        self.tally.accepted += 1
        sent_ns = self._sent_at.get(ref)
        if sent_ns is not None and self.measured(sent_ns):
            self.tally.accept_ms.append((now_ns - sent_ns) / NS_PER_MS)

    def on_committed(self, ref: str, now_ns: int) -> None:
        self.tally.committed += 1
        sent_ns = self._sent_at.pop(ref, None)
        if sent_ns is not None and self.measured(sent_ns):
            self.tally.commit_ms.append((now_ns - sent_ns) / NS_PER_MS)

    def on_received(self, ref: str, sent_ns: int, now_ns: int) -> None:
        in_window = self.measured(now_ns)
        if in_window:
            self.tally.window_receipts += 1
        if not self.measured(sent_ns):
            self._count_warmup_receipt(ref, in_window)
            return
        self.tally.receipts += 1
        self.tally.receipt_ms.append((now_ns - sent_ns) / NS_PER_MS)
        entry = self._open.get(ref)
        if entry is None:
            return
        if entry[1] <= 1:
            del self._open[ref]
            self.tally.completed += 1
            if in_window:
                self.tally.window_completed += 1
            if not self._open:
                self._drained.set()
        else:
            self._open[ref] = (entry[0], entry[1] - 1)

    def _count_warmup_receipt(self, ref: str, in_window: bool) -> None:
        remaining = self._open_before.get(ref)
        if remaining is None:
            return
        if remaining > 1:
            self._open_before[ref] = remaining - 1
            return
        del self._open_before[ref]
        if in_window:
            self.tally.window_completed += 1

    def on_error(self, ref: str | None, code: str) -> None:
        self.tally.errors[code] += 1

    def on_pong(self) -> None:
        self.tally.pongs += 1

    def forget_sent_times(self) -> None:
        """Drop send times no commit will claim (targets without commits)."""
        self._sent_at.clear()

    @property
    def open_messages(self) -> int:
        return len(self._open)

    async def wait_drained(self) -> None:
        """Return once every measured message has all its receipts."""
        while self._open:
            self._drained.clear()
            await self._drained.wait()


@dataclass(frozen=True)
class Plan:
    """The simulated users, the group of each, and each group's members."""

    users: list[str]
    group_of: dict[str, str]
    group_members: dict[str, list[str]]

    def pick_target(
        self, user: str, share: float, rng: random.Random
    ) -> tuple[str | None, str | None, int]:
        """Return (recipient, group, receipts expected) of the next message."""
        group = self.group_of.get(user)
        if group is not None and rng.random() < share:
            return None, group, len(self.group_members[group]) - 1
        while True:
            other = self.users[rng.randrange(len(self.users))]
            if other != user:
                return other, None, 1


def make_plan(users: list[str], group_size: int, group_prefix: str) -> Plan:
    """Put consecutive users into groups of `group_size` (a short last one joins none).

    Users are assigned to regions round-robin, so consecutive users, and
    so every group of two or more, span regions.
    """
    group_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    if group_size >= 2:
        for start in range(0, len(users) - group_size + 1, group_size):
            name = f"{group_prefix}{start // group_size}"
            members[name] = users[start : start + group_size]
            for user in members[name]:
                group_of[user] = name
    return Plan(users=users, group_of=group_of, group_members=members)


async def run_load(
    clients: list[BenchClient],
    plan: Plan,
    workload: Workload,
    recorder: LoadRecorder,
    label: str,
) -> float:
    """Send the workload; return the measured window's length in seconds."""
    start_ns = time.monotonic_ns()
    recorder.measure_from_ns = start_ns + int(workload.warmup_s * NS_PER_S)
    recorder.measure_until_ns = recorder.measure_from_ns + int(
        workload.duration_s * NS_PER_S
    )
    stop_ns = recorder.measure_until_ns
    padding = "x" * workload.content_bytes
    progress = asyncio.create_task(_show_progress(recorder, label, start_ns))
    try:
        await asyncio.gather(
            *(
                _send_loop(i, c, plan, workload, recorder, padding, stop_ns)
                for i, c in enumerate(clients)
            )
        )
        await _drain(recorder, workload.drain_s)
    finally:
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
    return workload.duration_s


async def _send_loop(
    index: int,
    client: BenchClient,
    plan: Plan,
    workload: Workload,
    recorder: LoadRecorder,
    padding: str,
    stop_ns: int,
) -> None:
    rng = random.Random(workload.seed * 1_000_003 + index)
    interval_ns = (
        int(len(plan.users) * NS_PER_S / workload.rate) if workload.rate > 0 else 0
    )
    next_ns = time.monotonic_ns() + int(rng.random() * interval_ns)
    counter = 0
    while True:
        now_ns = time.monotonic_ns()
        if interval_ns:
            if next_ns > now_ns:
                await asyncio.sleep((next_ns - now_ns) / NS_PER_S)
            next_ns += interval_ns
        if time.monotonic_ns() >= stop_ns:
            return
        if not await _take_slot(client, stop_ns):
            return
        if interval_ns and time.monotonic_ns() > next_ns:
            # The window was full past the next slot: skip slots, keep the pace.
            behind = (time.monotonic_ns() - next_ns) // interval_ns + 1
            recorder.tally.missed_slots += behind
            next_ns += behind * interval_ns
        counter += 1
        to, group, receipts = plan.pick_target(client.user, workload.group_share, rng)
        ref = f"{index}-{counter}"
        sent_ns = time.monotonic_ns()
        recorder.on_sent(ref, sent_ns, receipts)
        content = stamped_content(sent_ns, client.user, padding)
        await client.send(ref, content, to, group)


async def _take_slot(client: BenchClient, stop_ns: int) -> bool:
    remaining_s = (stop_ns - time.monotonic_ns()) / NS_PER_S
    if remaining_s <= 0:
        return False
    try:
        await asyncio.wait_for(client.window.acquire(), remaining_s)
    except TimeoutError:
        return False
    return True


async def _drain(recorder: LoadRecorder, drain_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(recorder.wait_drained(), drain_s)


async def _show_progress(recorder: LoadRecorder, label: str, start_ns: int) -> None:
    last_receipts, last_sent = 0, 0
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        t = recorder.tally
        elapsed = (time.monotonic_ns() - start_ns) / NS_PER_S
        phase = "warmup" if time.monotonic_ns() < recorder.measure_from_ns else "run"
        line = (
            f"  {label} {phase} {elapsed:5.1f}s"
            f"  sent {t.sent} (+{t.sent - last_sent}/s)"
            f"  accepted {t.accepted}  received {t.receipts}"
            f" (+{t.receipts - last_receipts}/s)  open {recorder.open_messages}"
            f"  errors {sum(t.errors.values())}"
        )
        print(line, file=sys.stderr, flush=True)
        last_receipts, last_sent = t.receipts, t.sent


async def run_pings(
    clients: list[BenchClient], interval_s: float, duration_s: float, seed: int
) -> int:
    """Have every client ping every `interval_s` for `duration_s`; return pings."""
    sent = 0
    stop = time.monotonic() + duration_s

    async def pinger(client: BenchClient, offset_s: float) -> None:
        nonlocal sent
        await asyncio.sleep(offset_s)
        while time.monotonic() < stop:
            await client.ping()
            sent += 1
            await asyncio.sleep(interval_s)

    rng = random.Random(seed)
    await asyncio.gather(*(pinger(c, rng.random() * interval_s) for c in clients))
    return sent


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Return p50, p90, p99, p99.9, max and mean of `values` (nearest rank)."""
    if not values:
        return {k: None for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
        return round(ordered[index], 3)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }
