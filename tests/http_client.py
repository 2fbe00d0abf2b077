"""A test client for the edge's HTTP transport, in the shape of `ChatClient`.

`shown` lists the messages in the order the client showed them, `cursors`
contains its position per conversation, and `events` receives every event
(messages as they are shown). Polls are long (`wait_s` > 0) or short
(`wait_s` = 0, with a pause between empty polls).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from chatmesh.client import ChatClient, ChatError
from core.schema import (
    AcceptedEvent,
    CommittedEvent,
    HelloEvent,
    MessageEvent,
    MessageView,
)
from edge.http_models import EventsPage
from tests.conftest import region_edge_url, token_for
from topology.launcher import Mesh

Event = Any
DEFAULT_TIMEOUT_S = 10.0
LONG_POLL_S = 5.0
SHORT_POLL_INTERVAL_S = 0.1
TRANSPORTS = ("websocket", "longpoll", "shortpoll")


class HttpChatError(ChatError):
    """An error response; `status` is its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def http_base_url(ws_url: str) -> str:
    """Return the HTTP base URL of the edge behind a `ws://host:port/v1/ws` URL."""
    parts = urlsplit(ws_url)
    return f"http://{parts.netloc}"


def region_http_url(mesh: Mesh, region: str) -> str:
    return http_base_url(region_edge_url(mesh, region))


class HttpChatClient:
    """One user's HTTP session with an edge: send, poll, cursors and order."""

    def __init__(
        self,
        base_url: str,
        token: str,
        cursors: dict[str, int] | None = None,
        *,
        wait_s: float = LONG_POLL_S,
    ) -> None:
        self.base_url = base_url
        self.cursors: dict[str, int] = dict(cursors or {})
        self.wait_s = wait_s
        self.hello: HelloEvent | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.shown: list[MessageView] = []
        # Messages at or below the cursor that a poll returned again.
        self.repeated: list[MessageView] = []
        self.polls = 0
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=wait_s + 10.0),
        )
        self._lock = asyncio.Lock()

    @property
    def session(self) -> str | None:
        return self.hello.connection if self.hello is not None else None

    async def connect(self) -> HelloEvent:
        """Open an HTTP session (`POST /v1/sessions`)."""
        reply = self._checked(await self._http.post("/v1/sessions"))
        self.hello = HelloEvent.model_validate_json(reply.content)
        return self.hello

    async def close(self) -> None:
        if self.session is not None:
            await self._http.delete(f"/v1/sessions/{self.session}")
            self.hello = None
        await self._http.aclose()

    async def send(
        self,
        to: str,
        content: str,
        client_msg_id: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> AcceptedEvent:
        """Send a message; return once the region has accepted it."""
        cmid = client_msg_id or uuid.uuid4().hex
        frame = {"type": "send", "id": cmid, "to": to, "content": content}
        reply = await self.post_raw("/v1/messages", frame, timeout_s=timeout_s)
        return AcceptedEvent.model_validate_json(self._checked(reply).content)

    async def post_raw(
        self,
        path: str,
        body: Any,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> httpx.Response:
        """POST `body` (JSON data, or raw text or bytes) with the session."""
        params = {"session": self.session} if self.session else {}
        if isinstance(body, str | bytes):
            return await self._http.post(
                path, content=body, params=params, timeout=timeout_s
            )
        return await self._http.post(path, json=body, params=params, timeout=timeout_s)

    async def poll(self, wait_s: float | None = None) -> EventsPage:
        """Run one poll from the cursors and apply its events."""
        wait = self.wait_s if wait_s is None else wait_s
        params: dict[str, str] = {
            "wait_s": str(wait),
            "cursors": _json(self.cursors),
        }
        if self.session:
            params["session"] = self.session
        async with self._lock:
            reply = self._checked(await self._http.get("/v1/events", params=params))
            self.polls += 1
            page = EventsPage.model_validate_json(reply.content)
            self._apply(page)
        return page

    async def sync(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, int]:
        """Short-poll until caught up; return the cursors."""
        async with asyncio.timeout(timeout_s):
            while (await self.poll(0)).more:
                pass
        return dict(self.cursors)

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Event:
        """Return the first event matching `predicate`, polling as needed."""
        async with asyncio.timeout(timeout_s):
            while True:
                while not self.events.empty():
                    event = self.events.get_nowait()
                    if predicate(event):
                        return event
                await self._poll_for_more()

    async def wait_for_messages(
        self, count: int, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> list[MessageView]:
        """Poll until `count` messages have been shown in total."""
        async with asyncio.timeout(timeout_s):
            while len(self.shown) < count:
                await self._poll_for_more()
        return list(self.shown)

    async def _poll_for_more(self) -> None:
        page = await self.poll()
        if self.wait_s == 0 and not page.events:
            await asyncio.sleep(SHORT_POLL_INTERVAL_S)

    def _apply(self, page: EventsPage) -> None:
        for event in page.events:
            if isinstance(event, MessageEvent):
                self._on_message(event.message)
                continue
            if isinstance(event, CommittedEvent):
                cursor = self.cursors.get(event.conversation, 0)
                self.cursors[event.conversation] = max(cursor, event.seq)
            self.events.put_nowait(event)
        self.cursors.update(page.cursors)

    def _on_message(self, message: MessageView) -> None:
        if message.seq <= self.cursors.get(message.conversation, 0):
            self.repeated.append(message)
            return
        self.cursors[message.conversation] = message.seq
        self.shown.append(message)
        self.events.put_nowait(MessageEvent(message=message))

    def _checked(self, reply: httpx.Response) -> httpx.Response:
        if reply.is_success:
            return reply
        try:
            body = reply.json()
            code, message = body["code"], body["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", reply.text
        raise HttpChatError(reply.status_code, code, message)


async def open_client(
    mesh: Mesh,
    transport: str,
    user: str,
    region: str,
    cursors: dict[str, int] | None = None,
) -> ChatClient | HttpChatClient:
    """Connect `user` to the edge of `region` over `transport`."""
    token = token_for(mesh, user)
    client: ChatClient | HttpChatClient
    if transport == "websocket":
        client = ChatClient(region_edge_url(mesh, region), token, cursors)
    elif transport in ("longpoll", "shortpoll"):
        wait_s = LONG_POLL_S if transport == "longpoll" else 0.0
        client = HttpChatClient(
            region_http_url(mesh, region), token, cursors, wait_s=wait_s
        )
    else:
        raise ValueError(f"unknown transport {transport!r}; use one of {TRANSPORTS}")
    await client.connect()
    return client


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
