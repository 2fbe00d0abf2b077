"""The terminal client: `chatmesh chat --user alice --region eu-west`.

Each stdin line `bob: hello` sends "hello" to bob. Events are printed as
text on a terminal and as one JSON object per line in a pipe.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from chatmesh.client import ChatClient, ChatError
from core.schema import AcceptedEvent, CommittedEvent, ErrorEvent, MessageEvent

QUIT_TIMEOUT_S = 2.0


async def run_chat(url: str, token: str, as_json: bool) -> int:
    """Chat until stdin closes; return the process exit code."""
    client = ChatClient(url, token)
    try:
        hello = await client.connect()
    except (ChatError, OSError) as exc:
        print(f"cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    _emit(
        {
            "type": "hello",
            "user": hello.user,
            "region": hello.region,
            "edge": hello.edge,
        },
        as_json,
    )
    printer = asyncio.create_task(_print_events(client, as_json))
    try:
        await client.sync()
    except (ChatError, TimeoutError) as exc:
        # Live messages still arrive; the history shows up on a later sync.
        message = str(exc) or "the edge did not reply in time"
        _emit({"type": "error", "code": "sync_failed", "message": message}, as_json)
    await _read_stdin(client, as_json)
    # Give the last commits a moment to arrive before closing.
    await asyncio.sleep(QUIT_TIMEOUT_S)
    printer.cancel()
    await client.close()
    return 0


async def _read_stdin(client: ChatClient, as_json: bool) -> None:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        line = line.strip()
        if not line:
            continue
        to, sep, content = line.partition(":")
        if not sep or not content.strip():
            _emit(
                {"type": "error", "code": "usage", "message": "write `user: message`"},
                as_json,
            )
            continue
        try:
            await client.send(to.strip(), content.strip())
        except ChatError as exc:
            _emit({"type": "error", "code": exc.code, "message": exc.message}, as_json)
        except TimeoutError:
            _emit(
                {
                    "type": "error",
                    "code": "timeout",
                    "message": "no answer from the edge",
                },
                as_json,
            )


async def _print_events(client: ChatClient, as_json: bool) -> None:
    while True:
        event = await client.events.get()
        if isinstance(event, MessageEvent):
            message = event.message
            _emit(event.model_dump(), as_json, f"{message.sender}: {message.content}")
        elif isinstance(event, AcceptedEvent | CommittedEvent | ErrorEvent):
            _emit(event.model_dump(), as_json, _summary(event))


def _summary(event: AcceptedEvent | CommittedEvent | ErrorEvent) -> str:
    if isinstance(event, AcceptedEvent):
        return f"  (accepted {event.id})"
    if isinstance(event, CommittedEvent):
        return f"  (committed {event.id} as #{event.seq} in {event.conversation})"
    return f"! {event.code}: {event.message}"


def _emit(data: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(data), flush=True)
    else:
        print(text if text is not None else json.dumps(data), flush=True)
