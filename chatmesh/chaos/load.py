"""A steady chat load of `FailoverClient`s in every region, with a ledger.

Users sit on a ring and alternate their messages between their two ring
neighbours. Home regions go round the topology's regions two users at a
time, so some conversations stay inside a region and some cross regions.
Each user sends at a fixed interval and waits for each send to be accepted
before the next, like a person typing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import structlog

from chatmesh.client import ChatError, Event
from chatmesh.failover import FailoverClient, FailoverPolicy
from core.schema import MessageEvent
from topology.launcher import Mesh, dev_token_signer

log = structlog.get_logger(__name__)

SEND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
# Users of a home region in a row on the ring.
USERS_PER_REGION_RUN = 2


@dataclass
class SentMessage:
    """One send of the load; times are `time.monotonic()` values."""

    sender: str
    recipient: str
    client_msg_id: str
    # The sender's count of sends before this one: its send order.
    index: int
    sent_at: float
    accepted_at: float | None = None
    error: str | None = None


@dataclass
class LoadUser:
    """One user of the load, its client and when it was shown each message."""

    name: str
    home_region: str
    partners: tuple[str, str]
    client: FailoverClient
    # (sender, client message id) -> the first time it was shown.
    shown_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def on_event(self, event: Event) -> None:
        if isinstance(event, MessageEvent):
            key = (event.message.sender, event.message.client_msg_id)
            self.shown_at.setdefault(key, time.monotonic())


class Load:
    """`clients` users chatting, each sending one message every `interval_s`."""

    def __init__(
        self,
        mesh: Mesh,
        tag: str,
        clients: int,
        interval_s: float,
        policy: FailoverPolicy | None = None,
    ) -> None:
        if clients < 3:
            raise ValueError(f"the load needs at least 3 clients, got {clients}")
        self.interval_s = interval_s
        self.ledger: list[SentMessage] = []
        self.users = self._make_users(mesh, tag, clients, policy)
        self._stopping = asyncio.Event()
        self._senders: list[asyncio.Task[None]] = []

    @staticmethod
    def _make_users(
        mesh: Mesh, tag: str, count: int, policy: FailoverPolicy | None
    ) -> list[LoadUser]:
        sign = dev_token_signer(mesh.layout, mesh.topology.name)
        regions = mesh.topology.regions
        names = [f"{tag}-{i:02d}" for i in range(count)]
        users = []
        for i, name in enumerate(names):
            region = regions[(i // USERS_PER_REGION_RUN) % len(regions)]
            edge_url = mesh.edge_url(region.edges[0].name)
            client = FailoverClient(edge_url, sign(name), policy=policy)
            user = LoadUser(
                name=name,
                home_region=region.name,
                partners=(names[(i + 1) % count], names[(i - 1) % count]),
                client=client,
            )
            client.client.listeners.append(user.on_event)
            users.append(user)
        return users

    async def connect(self) -> None:
        """Connect every user in its home region, before anyone sends."""
        await asyncio.gather(
            *(user.client.start(START_TIMEOUT_S) for user in self.users)
        )
        log.info("load.connected", clients=len(self.users))

    def begin(self) -> None:
        """Start every user's sends."""
        self._senders = [
            asyncio.create_task(self._send_forever(user)) for user in self.users
        ]
        log.info("load.started", clients=len(self.users), interval_s=self.interval_s)

    async def stop(self, timeout_s: float) -> None:
        """Stop sending; wait up to `timeout_s` for sends in flight to finish."""
        self._stopping.set()
        if self._senders:
            _, pending = await asyncio.wait(self._senders, timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("load.stopped", sent=len(self.ledger))

    async def sync_all(self, timeout_s: float) -> None:
        """Sync every client once, so each has what its cursors are missing."""

        async def sync(user: LoadUser) -> None:
            try:
                async with asyncio.timeout(timeout_s):
                    await user.client.sync()
            except (ChatError, TimeoutError) as exc:
                log.warning("load.final_sync_failed", user=user.name, error=repr(exc))

        await asyncio.gather(*(sync(user) for user in self.users))

    async def close(self) -> None:
        await asyncio.gather(*(user.client.close() for user in self.users))

    async def _send_forever(self, user: LoadUser) -> None:
        loop = asyncio.get_running_loop()
        # Spread the first sends over one interval, so users do not send in step.
        next_at = loop.time() + random.uniform(0.0, self.interval_s)
        index = 0
        while not self._stopping.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if self._stopping.is_set():
                return
            await self._send_one(user, index)
            index += 1
            # After a stalled send, carry on at the normal pace, not in a burst.
            next_at = max(next_at + self.interval_s, loop.time())

    async def _send_one(self, user: LoadUser, index: int) -> None:
        recipient = user.partners[index % 2]
        record = SentMessage(
            sender=user.name,
            recipient=recipient,
            client_msg_id=f"{user.name}-{index}",
            index=index,
            sent_at=time.monotonic(),
        )
        self.ledger.append(record)
        try:
            await user.client.send(
                recipient,
                f"message {index} from {user.name}",
                record.client_msg_id,
                timeout_s=SEND_TIMEOUT_S,
            )
        except (ChatError, TimeoutError) as exc:
            record.error = repr(exc)
            log.warning(
                "load.send_failed",
                user=user.name,
                client_msg_id=record.client_msg_id,
                error=record.error,
            )
            return
        record.accepted_at = time.monotonic()
