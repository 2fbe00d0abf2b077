"""The wire schema: client frames, edge events, and the envelopes on NATS.

This module is the one place where the shape of every message is defined.
Client frames and edge events are JSON objects with a `type` field. Internal
envelopes travel on NATS subjects named in `core.subjects`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1

# Client message ids and user names are short printable tokens: they appear in
# NATS subjects and headers, so dots, spaces and wildcards are excluded.
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
CONVERSATION_PATTERN = r"^(dm|grp):[a-z0-9_:-]{1,200}$"
MAX_CURSORS = 10_000


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- client to edge ---------------------------------------------------------


class SendFrame(_Wire):
    """Send `content` to user `to`; `id` is the client's idempotency key."""

    type: Literal["send"]
    id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    to: Annotated[str, Field(pattern=USER_PATTERN)]
    content: str


class SyncFrame(_Wire):
    """Request every message after the given per-conversation cursors.

    A conversation missing from `cursors` is synced from its start.
    """

    type: Literal["sync"]
    cursors: Annotated[
        dict[
            Annotated[str, Field(pattern=CONVERSATION_PATTERN)],
            Annotated[int, Field(ge=0)],
        ],
        Field(max_length=MAX_CURSORS),
    ] = Field(default_factory=dict)


class PingFrame(_Wire):
    type: Literal["ping"]


class AuthFrame(_Wire):
    """The first frame of a WebSocket: the client's signed token."""

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=4096)]


ClientFrame = Annotated[
    SendFrame | SyncFrame | PingFrame | AuthFrame, Field(discriminator="type")
]
CLIENT_FRAME = TypeAdapter[SendFrame | SyncFrame | PingFrame | AuthFrame](ClientFrame)


# ---- stored message ---------------------------------------------------------


class StoredMessage(_Wire):
    """One committed message, as stored and as delivered.

    `seq` is dense per conversation, starting at 1. `message_id` is the
    64-bit time-ordered id; it travels as a decimal string to clients so
    JavaScript keeps every bit.
    """

    message_id: int
    conversation: str
    seq: int
    sender: str
    recipient: str | None
    content: str
    timestamp_ms: int
    client_msg_id: str


class MessageView(_Wire):
    """A message as a client sees it."""

    message_id: str
    conversation: str
    seq: int
    sender: str
    recipient: str | None
    content: str
    timestamp_ms: int
    client_msg_id: str

    @classmethod
    def of(cls, message: StoredMessage) -> MessageView:
        data = message.model_dump()
        data["message_id"] = str(message.message_id)
        return cls.model_validate(data)


# ---- edge to client ---------------------------------------------------------


class HelloEvent(_Wire):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    user: str
    region: str
    edge: str
    connection: str


class AcceptedEvent(_Wire):
    """The message is stored and fsynced in the region's JetStream."""

    type: Literal["accepted"] = "accepted"
    id: str
    duplicate: bool = False


class CommittedEvent(_Wire):
    """The message is sequenced and stored centrally."""

    type: Literal["committed"] = "committed"
    id: str
    message_id: str
    conversation: str
    seq: int
    timestamp_ms: int


class MessageEvent(_Wire):
    type: Literal["message"] = "message"
    message: MessageView


class SyncedEvent(_Wire):
    """The end of a sync: the client now holds everything up to `cursors`."""

    type: Literal["synced"] = "synced"
    cursors: dict[str, int]


class PongEvent(_Wire):
    type: Literal["pong"] = "pong"


class ErrorEvent(_Wire):
    """A rejected frame or request; `ref` is the frame's `id` when it had one."""

    type: Literal["error"] = "error"
    code: str
    message: str
    ref: str | None = None


ServerEvent = Annotated[
    HelloEvent
    | AcceptedEvent
    | CommittedEvent
    | MessageEvent
    | SyncedEvent
    | PongEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
SERVER_EVENT = TypeAdapter[
    HelloEvent
    | AcceptedEvent
    | CommittedEvent
    | MessageEvent
    | SyncedEvent
    | PongEvent
    | ErrorEvent
](ServerEvent)


# ---- internal envelopes -----------------------------------------------------


class Origin(_Wire):
    """Where a message entered the mesh, so its commit can find the sender."""

    region: str
    edge: str
    connection: str


class IngestEnvelope(_Wire):
    """A validated client message, as the edge stores it in JetStream."""

    sender: str
    recipient: str
    client_msg_id: str
    content: str
    accepted_at_ms: int
    origin: Origin


class Delivery(_Wire):
    """A committed message on its way to the edges of one region."""

    message: StoredMessage
    recipients: list[str]
    origin: Origin


class SessionOpen(_Wire):
    """An edge tells the registry that a user connected there."""

    user: str
    region: str
    edge: str


class PresenceReport(_Wire):
    """An edge's periodic snapshot of the users it holds sessions for."""

    region: str
    edge: str
    users: list[str]
    sent_at_ms: int


class SyncRequest(_Wire):
    user: str
    cursors: dict[str, int]
    limit: int = Field(default=200, ge=1, le=1000)


class SyncReply(_Wire):
    """A page of messages after the request's cursors.

    `cursors` holds the position reached in every conversation of the user;
    `more` is true when another request is needed to catch up.
    """

    messages: list[StoredMessage]
    cursors: dict[str, int]
    more: bool


class UserRequest(_Wire):
    user: str


class UserReply(_Wire):
    user: str
    exists: bool


class ServiceError(_Wire):
    """The reply of a core service when a request failed."""

    error: str
