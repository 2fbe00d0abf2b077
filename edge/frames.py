"""Decode client frames into schema objects, with errors a person can act on."""

from __future__ import annotations

import json

from pydantic import ValidationError

from core.errors import ContentTooLarge, MalformedFrame
from core.schema import CLIENT_FRAME, CLIENT_FRAME_TYPES, AnyClientFrame, SendFrame

Frame = AnyClientFrame
FRAME_TYPES = ", ".join(CLIENT_FRAME_TYPES)


def decode_frame(text: str) -> Frame:
    """Parse one JSON text frame; raise `MalformedFrame` naming what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedFrame(
            f"frame is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from exc
    if not isinstance(raw, dict):
        raise MalformedFrame(f"frame must be a JSON object, got {type(raw).__name__}")
    ref = raw.get("id") if isinstance(raw.get("id"), str) else None
    kind = raw.get("type")
    if kind not in CLIENT_FRAME_TYPES:
        raise MalformedFrame(
            f"unknown frame type {kind!r}; expected one of: {FRAME_TYPES}", ref=ref
        )
    try:
        return CLIENT_FRAME.validate_python(raw)
    except ValidationError as exc:
        raise MalformedFrame(_describe(exc, str(kind)), ref=ref) from exc


def _describe(exc: ValidationError, kind: str) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"][1:]) or kind
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
