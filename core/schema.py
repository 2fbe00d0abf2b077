"""The wire schema: client frames, edge events, and the envelopes on NATS.

This module is the one place where the shape of every message is defined.
Client frames and edge events are JSON objects with a `type` field. Internal
envelopes travel on NATS subjects named in `core.subjects`.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

PROTOCOL_VERSION = 1

# Client message ids and user names are short printable tokens: they appear in
# NATS subjects and headers, so dots, spaces and wildcards are excluded.
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_PRESENCE_USERS = 500
CONVERSATION_PATTERN = r"^(dm|grp):[a-z0-9_:-]{1,200}$"
MAX_CURSORS = 10_000


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- client to edge ---------------------------------------------------------


class SendFrame(_Wire):
    """Send `content` to user `to` or to group `group` (exactly one of them).

    `id` is the client's idempotency key: a resend with the same id is stored
    once.
    """

    type: Literal["send"]
    id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    to: Annotated[str | None, Field(pattern=USER_PATTERN)] = None
    group: Annotated[str | None, Field(pattern=GROUP_PATTERN)] = None
    content: str

    @model_validator(mode="after")
    def _one_target(self) -> SendFrame:
        if (self.to is None) == (self.group is None):
            raise ValueError("give exactly one of `to` (a user) or `group`")
        return self


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


GroupOp = Literal["create", "add", "remove", "leave", "promote", "demote", "members"]
User = Annotated[str, Field(pattern=USER_PATTERN)]


class GroupFrame(_Wire):
    """Administer a group or read its members.

    `create` takes `name` and optional initial `members`; `add`, `remove`,
    `promote` and `demote` take `user`; `leave` and `members` take neither.
    """

    type: Literal["group"]
    id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    op: GroupOp
    group: Annotated[str, Field(pattern=GROUP_PATTERN)]
    user: User | None = None
    name: Annotated[str, Field(max_length=200)] | None = None
    members: Annotated[list[User], Field(max_length=1000)] = Field(default_factory=list)


class GroupsFrame(_Wire):
    """List the groups the user belongs to."""

    type: Literal["groups"]
    id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]


class PresenceFrame(_Wire):
    """Query the presence of `users`, and subscribe to their changes if asked."""

    type: Literal["presence"]
    id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    users: Annotated[list[User], Field(min_length=1, max_length=MAX_PRESENCE_USERS)]
    subscribe: bool = False


class AuthFrame(_Wire):
    """The first frame of a WebSocket: the client's signed token."""

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=4096)]


AnyClientFrame = (
    SendFrame
    | SyncFrame
    | PingFrame
    | AuthFrame
    | GroupFrame
    | GroupsFrame
    | PresenceFrame
)
ClientFrame = Annotated[AnyClientFrame, Field(discriminator="type")]
CLIENT_FRAME = TypeAdapter[AnyClientFrame](ClientFrame)
CLIENT_FRAME_TYPES = ("auth", "send", "sync", "ping", "group", "groups", "presence")


# ---- stored message ---------------------------------------------------------


MessageKind = Literal[
    "text",
    "group_created",
    "member_added",
    "member_removed",
    "member_left",
    "role_changed",
]


class StoredMessage(_Wire):
    """One committed message, as stored and as delivered.

    `seq` is dense per conversation, starting at 1. `message_id` is the
    64-bit time-ordered id; it travels as a decimal string to clients so
    JavaScript keeps every bit. `recipient` is set for 1-1 messages only.
    Group membership changes are messages too, of a `kind` other than
    `text`, so they take their place in the conversation's order; `target`
    names the member they concern and `content` the new role or group name.
    """

    message_id: int
    conversation: str
    seq: int
    sender: str
    recipient: str | None
    content: str
    timestamp_ms: int
    client_msg_id: str
    kind: MessageKind = "text"
    target: str | None = None


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
    kind: MessageKind = "text"
    target: str | None = None

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
    """The end of a sync: the client now has everything up to `cursors`."""

    type: Literal["synced"] = "synced"
    cursors: dict[str, int]


class PongEvent(_Wire):
    type: Literal["pong"] = "pong"


GroupRole = Literal["owner", "admin", "member"]


class GroupView(_Wire):
    """A group and its members with their roles.

    `seq` is the position of the change that produced this view in the
    group's conversation, 0 for a read.
    """

    group: str
    name: str
    owner: str
    members: dict[str, GroupRole]
    seq: int = 0


class GroupEvent(_Wire):
    """The reply to a `group` frame."""

    type: Literal["group"] = "group"
    ref: str
    group: GroupView


class GroupSummary(_Wire):
    group: str
    name: str
    role: GroupRole


class GroupsEvent(_Wire):
    """The reply to a `groups` frame."""

    type: Literal["groups"] = "groups"
    ref: str
    groups: list[GroupSummary]


class UserPresence(_Wire):
    """Whether a user is online and where, or when they were last seen.

    `last_seen_ms` is Unix milliseconds, or None for a user never seen.
    """

    user: str
    online: bool
    region: str | None = None
    edge: str | None = None
    last_seen_ms: int | None = None


class PresenceEvent(_Wire):
    """Presence states: the reply to a `presence` frame (with `ref`) or a change."""

    type: Literal["presence"] = "presence"
    ref: str | None = None
    users: list[UserPresence]


class ErrorEvent(_Wire):
    """A rejected frame or request; `ref` is the frame's `id` when it had one.

    `retry_after_ms` comes with `rate_limited`: how long to wait before the
    edge accepts the frame.
    """

    type: Literal["error"] = "error"
    code: str
    message: str
    ref: str | None = None
    retry_after_ms: int | None = None


AnyServerEvent = (
    HelloEvent
    | AcceptedEvent
    | CommittedEvent
    | MessageEvent
    | SyncedEvent
    | PongEvent
    | ErrorEvent
    | GroupEvent
    | GroupsEvent
    | PresenceEvent
)
ServerEvent = Annotated[AnyServerEvent, Field(discriminator="type")]
SERVER_EVENT = TypeAdapter[AnyServerEvent](ServerEvent)


# ---- internal envelopes -----------------------------------------------------


class Origin(_Wire):
    """The edge and connection a message entered by, so its commit finds the sender."""

    region: str
    edge: str
    connection: str


class IngestEnvelope(_Wire):
    """A validated client message, as the edge stores it in JetStream.

    Exactly one of `recipient` (1-1) and `group` is set.
    """

    sender: str
    recipient: str | None = None
    group: str | None = None
    client_msg_id: str
    content: str
    accepted_at_ms: int
    origin: Origin


class IngestBatch(_Wire):
    """Client messages that an edge stores in its leaf's JetStream as one message.

    An edge gathers the messages its clients send within a few milliseconds
    and stores them with one JetStream write, because each write to a leaf
    stream costs an fsync. Each sender gets `accepted` only after JetStream
    acknowledged the whole batch. `batch_id` is the batch's `Nats-Msg-Id`,
    unique per edge process. So the leaf's duplicate window catches a repeated
    publish of one batch, but a client's resend travels in a later batch
    under another id: the store's (sender, client_msg_id) key stores it once.
    """

    edge: str
    batch_id: str
    envelopes: Annotated[list[IngestEnvelope], Field(min_length=1)]


def encode_ingest_batch(edge: str, batch_id: str, envelopes: list[bytes]) -> bytes:
    """Return the JSON of an `IngestBatch` from envelopes already encoded as JSON.

    The edge encodes each envelope once, when it joins a batch, to know the
    batch's size; this joins them without encoding them again.
    """
    head = json.dumps({"edge": edge, "batch_id": batch_id})[:-1].encode()
    return head + b', "envelopes": [' + b", ".join(envelopes) + b"]}"


class Rejection(_Wire):
    """The reason the sequencer rejected an accepted message, which is not stored."""

    # None in rejections routed by a core that did not name the sender.
    sender: str | None = None
    client_msg_id: str
    code: str
    message: str


class Delivery(_Wire):
    """A committed message, or a rejection, on its way to one region's edges.

    `recipients` are the users whose connections get the message; the
    connection named by `origin` gets a `committed` (or `error`) event.
    `committed_at_ms` is the core's wall clock when it stored the message,
    for the hub-to-edge latency metric.
    """

    message: StoredMessage | None = None
    rejection: Rejection | None = None
    recipients: list[str]
    origin: Origin
    committed_at_ms: int | None = None


class DeliveryBatch(_Wire):
    """Deliveries to one region that the core publishes as one JetStream message.

    The core commits client messages in batches and routes each batch with
    one publish per region, not one per message and region.
    """

    deliveries: Annotated[list[Delivery], Field(min_length=1)]


def encode_delivery_batch(deliveries: list[bytes]) -> bytes:
    """Return the JSON of a `DeliveryBatch` from deliveries already encoded."""
    return b'{"deliveries": [' + b", ".join(deliveries) + b"]}"


class SessionOpen(_Wire):
    """A notice from an edge to the registry that a user connected there."""

    user: str
    region: str
    edge: str


class PresenceReport(_Wire):
    """An edge's one presence message per interval.

    A `full` report lists in `online` every user with a session on the
    edge. The others list only the users who connected (`online`) or whose
    last connection closed (`offline`) since the previous report. An empty
    report still shows that the edge is alive. `report_seq` counts reports,
    so a receiver that finds a gap requests a full report.
    """

    region: str
    edge: str
    report_seq: int
    full: bool
    online: list[str] = Field(default_factory=list)
    offline: list[str] = Field(default_factory=list)
    sent_at_ms: int


class PresenceFullRequest(_Wire):
    """A request from the core to the named edges for a full report next time."""

    edges: list[str]


class PresenceChanges(_Wire):
    """A batch of presence changes the core publishes once per interval."""

    users: list[UserPresence]


class PresenceRequest(_Wire):
    actor: str
    users: list[str]


class PresenceReply(_Wire):
    """States of the users the actor may see; the rest are listed in `denied`."""

    users: list[UserPresence]
    denied: list[str]


class GroupRequest(_Wire):
    actor: str
    op: GroupOp | Literal["list", "can_post"]
    group: str = ""
    user: str | None = None
    name: str | None = None
    members: list[str] = Field(default_factory=list)


class GroupReply(_Wire):
    group: GroupView | None = None
    groups: list[GroupSummary] = Field(default_factory=list)
    allowed: bool = True


class SyncRequest(_Wire):
    user: str
    cursors: dict[str, int]
    limit: int = Field(default=200, ge=1, le=1000)


class SyncReply(_Wire):
    """A page of messages after the request's cursors.

    `cursors` contains the position reached in every conversation of the user;
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
    """The reply of a core service when a request failed.

    `code` is a client error code when the request itself was at fault, or
    `internal` when the service failed.
    """

    error: str
    code: str = "internal"
