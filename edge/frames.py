"""Decode client frames into schema objects, with errors a person can act on."""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from core.errors import ContentTooLarge, MalformedFrame
from core.schema import (
    CLIENT_FRAME,
    CLIENT_FRAME_TYPES,
    CLIENT_ID_PATTERN,
    AnyClientFrame,
    SendFrame,
)

Frame = AnyClientFrame
FRAME_TYPES = ", ".join(CLIENT_FRAME_TYPES)
# Errors echo client values (field names, frame types) up to this length,
# and list at most this many problems, so they stay short whatever was sent.
SHOWN_CHARS = 64
MAX_PROBLEMS = 5


def decode_frame(text: str) -> Frame:
    """Parse one JSON text frame; raise `MalformedFrame` naming what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedFrame(
            f"frame is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from exc
    except RecursionError as exc:
        raise MalformedFrame("frame nests JSON arrays or objects too deeply") from exc
    except ValueError as exc:
        # Python refuses integers of more than 4300 digits.
        raise MalformedFrame(f"frame is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise MalformedFrame(f"frame must be a JSON object, got {type(raw).__name__}")
    ref = raw.get("id") if _is_client_id(raw.get("id")) else None
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_FRAME_TYPES:
        raise MalformedFrame(
            f"unknown frame type {_shown(kind)}; expected one of: {FRAME_TYPES}",
            ref=ref,
        )
    try:
        return CLIENT_FRAME.validate_python(raw)
    except (ValidationError, RecursionError) as exc:
        raise MalformedFrame(_describe(exc, kind), ref=ref) from exc


def _is_client_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(CLIENT_ID_PATTERN, value) is not None


def _shown(value: object) -> str:
    """Return a short description of a client's value, safe to echo and log."""
    if isinstance(value, str):
        return repr(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else "")
    return f"of JSON type {type(value).__name__}"


def _describe(exc: ValidationError | RecursionError, kind: str) -> str:
    if isinstance(exc, RecursionError):
        return f"invalid {kind} frame: it nests too deeply"
    problems = []
    for error in exc.errors()[:MAX_PROBLEMS]:
        parts = [str(part)[:SHOWN_CHARS] for part in error["loc"][1:]]
        where = ".".join(parts) or kind
        problems.append(f"{where}: {error['msg']}")
    return f"invalid {kind} frame: " + "; ".join(problems)


def check_content(frame: SendFrame, max_bytes: int) -> None:
    """Raise if the content is not valid UTF-8 or is larger than `max_bytes`."""
    try:
        size = len(frame.content.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise MalformedFrame(
            f"content is not valid UTF-8 (position {exc.start}); send text only",
            ref=frame.id,
        ) from exc
    if size == 0:
        raise MalformedFrame(
            "content is empty; send at least one character", ref=frame.id
        )
    if size > max_bytes:
        raise ContentTooLarge(
            f"content is {size} bytes of UTF-8; the limit is {max_bytes}",
            ref=frame.id,
        )
