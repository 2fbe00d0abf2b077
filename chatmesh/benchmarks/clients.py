"""Load-generating clients: one per simulated user, over WebSocket or bare NATS.

The clients skip the schema validation and cursor bookkeeping of
`chatmesh.client.ChatClient`, so the load generator spends its CPU on
sending and timing. Each message's content starts with the sender's
`time.monotonic_ns()`, and every receipt is timed against it. The monotonic
clock is shared by all processes of one Linux machine, so the figures hold
only when the load generator and the mesh share the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from abc import ABC, abstractmethod
from typing import Any, Protocol

import nats
import structlog
import websockets
from nats.aio.client import Client
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 15.0
GROUP_TIMEOUT_S = 15.0
MAX_FRAME_BYTES = 2**20


class Recorder(Protocol):
    """The receiver of what happened to each message, keyed by its client id."""

    def on_accepted(self, ref: str, now_ns: int) -> None: ...

    def on_committed(self, ref: str, now_ns: int) -> None: ...

    def on_received(self, ref: str, sent_ns: int, now_ns: int) -> None: ...

    def on_error(self, ref: str | None, code: str) -> None: ...

    def on_pong(self) -> None: ...


def stamped_content(sent_ns: int, sender: str, padding: str) -> str:
    """Return message text that carries its send time and sender."""
    return f"{sent_ns} {sender} {padding}"


def read_stamp(content: str) -> tuple[int, str]:
    """Return the (send time, sender) a `stamped_content` text starts with."""
    stamp, sender, _ = content.split(" ", 2)
    return int(stamp), sender


class BenchClient(ABC):
    """One simulated user with a window of messages not yet accepted."""

    def __init__(self, user: str, recorder: Recorder, window: int) -> None:
        self.user = user
        self.recorder = recorder
        self.window = asyncio.Semaphore(window)

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def create_group(self, group: str, members: list[str]) -> None: ...

    @abstractmethod
    async def send(
        self, ref: str, content: str, to: str | None, group: str | None
    ) -> None:
        """Send one message; the caller has taken a slot of `window`."""

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class WebSocketClient(BenchClient):
    """A client of a chatmesh edge, or of the bare relay, over `/v1/ws`."""

    def __init__(
        self, url: str, token: str, user: str, recorder: Recorder, window: int
    ) -> None:
        super().__init__(user, recorder, window)
        self.url = url
        self._token = token
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def connect(self) -> None:
        # No permessage-deflate: compression would cost both ends CPU per frame.
        ws = await websockets.connect(
            self.url,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            open_timeout=CONNECT_TIMEOUT_S,
        )
        await ws.send(json.dumps({"type": "auth", "token": self._token}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S))
        if hello.get("type") != "hello":
            await ws.close()
            raise ConnectionError(
                f"{self.url} rejected user {self.user}: {hello.get('message', hello)}"
            )
        # The edge reads frames only once it has registered the user, so a
        # pong proves that the others may now name this user as a recipient.
        await ws.send('{"type": "ping"}')
        while (
            json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S)).get("type")
            != "pong"
        ):
            pass
        self._ws = ws
        self._reader = asyncio.create_task(self._read_loop(ws))

    async def create_group(self, group: str, members: list[str]) -> None:
        assert self._ws is not None
        ref = f"create-{group}"
        future = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        frame = {
            "type": "group",
            "id": ref,
            "op": "create",
            "group": group,
            "name": group,
            "members": [m for m in members if m != self.user],
        }
        await self._ws.send(json.dumps(frame))
        reply = await asyncio.wait_for(future, GROUP_TIMEOUT_S)
        if reply.get("type") != "group":
            raise RuntimeError(f"creating group {group} failed: {reply}")

    async def send(
        self, ref: str, content: str, to: str | None, group: str | None
    ) -> None:
        assert self._ws is not None
        frame: dict[str, str] = {"type": "send", "id": ref, "content": content}
        if group is not None:
            frame["group"] = group
        else:
            frame["to"] = to or ""
        await self._ws.send(json.dumps(frame))

    async def ping(self) -> None:
        assert self._ws is not None
        await self._ws.send('{"type": "ping"}')

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read_loop(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                self._on_event(json.loads(raw))

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        now_ns = time.monotonic_ns()
        if kind == "message":
            message = event["message"]
            if message.get("kind", "text") == "text":
                sent_ns, _ = read_stamp(message["content"])
                self.recorder.on_received(message["client_msg_id"], sent_ns, now_ns)
        elif kind == "accepted":
            self.window.release()
            self.recorder.on_accepted(event["id"], now_ns)
        elif kind == "committed":
            self.recorder.on_committed(event["id"], now_ns)
        elif kind == "pong":
            self.recorder.on_pong()
        elif kind in ("group", "error"):
            self._on_reply(event)

    def _on_reply(self, event: dict[str, Any]) -> None:
        ref = event.get("ref")
        future = self._replies.pop(ref or "", None)
        if future is not None and not future.done():
            future.set_result(event)
            return
        if event.get("type") == "error":
            if ref is not None and ref != "sync":
                self.window.release()
            self.recorder.on_error(ref, str(event.get("code")))


class NatsClient(BenchClient):
    """A user of bare NATS publish-subscribe: the broker path with no chat logic.

    Each user subscribes to its own subject and to its groups' subjects on
    its region's leaf node. A send publishes once and counts as accepted when
    a flush returns (a PING and the server's PONG). That is the closest
    thing core NATS has to the edge's JetStream acknowledgement.
    """

    def __init__(
        self, server: str, prefix: str, user: str, recorder: Recorder, window: int
    ) -> None:
        super().__init__(user, recorder, window)
        self._server = server
        self._prefix = prefix
        self._nc: Client | None = None

    async def connect(self) -> None:
        self._nc = await nats.connect(
            servers=[self._server], name=f"bench-{self.user}", allow_reconnect=False
        )
        await self._nc.subscribe(self._user_subject(self.user), cb=self._on_msg)

    async def create_group(self, group: str, members: list[str]) -> None:
        # Members subscribe in `join_group`; a NATS subject needs no creation.
        return None

    async def join_group(self, group: str) -> None:
        assert self._nc is not None
        await self._nc.subscribe(self._group_subject(group), cb=self._on_msg)
        await self._nc.flush()

    async def send(
        self, ref: str, content: str, to: str | None, group: str | None
    ) -> None:
        assert self._nc is not None
        subject = (
            self._group_subject(group)
            if group is not None
            else self._user_subject(to or "")
        )
        await self._nc.publish(subject, content.encode(), headers={"ref": ref})
        await self._nc.flush()
        self.window.release()
        self.recorder.on_accepted(ref, time.monotonic_ns())

    async def ping(self) -> None:
        assert self._nc is not None
        await self._nc.flush()
        self.recorder.on_pong()

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _on_msg(self, msg: Msg) -> None:
        now_ns = time.monotonic_ns()
        sent_ns, sender = read_stamp(msg.data.decode())
        if sender != self.user:
            ref = (msg.headers or {}).get("ref", "")
            self.recorder.on_received(ref, sent_ns, now_ns)

    def _user_subject(self, user: str) -> str:
        return f"{self._prefix}.user.{user}"

    def _group_subject(self, group: str) -> str:
        return f"{self._prefix}.group.{group}"
