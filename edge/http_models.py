"""Bodies of the HTTP transport that have no WebSocket frame or event.

Requests reuse the client frames of `core.schema` (a `send` frame for
`POST /v1/messages`, a `sync` frame for `POST /v1/events`), and responses
reuse its events. Only the shapes below are HTTP-specific.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.schema import USER_PATTERN, CommittedEvent, ErrorEvent, MessageEvent

PolledEvent = Annotated[
    MessageEvent | CommittedEvent | ErrorEvent, Field(discriminator="type")
]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HttpError(_Body):
    """The body of every 4xx and 5xx response of the HTTP transport.

    `ref` is the rejected frame's `id` when it had one. `url` is set only for
    `wrong_edge`: the base URL of the edge that serves the user.
    """

    code: str
    message: str
    ref: str | None = None
    url: str | None = None


class EventsPage(_Body):
    """The result of one poll: the events after the request's cursors, in order.

    Error events come first: sends of this session that the core rejected
    after the edge had accepted them. `cursors` are the client's cursors once
    it has applied `events`. `more` is true when the edge stopped at its page
    limit, so the client should poll again at once.
    """

    events: list[PolledEvent]
    cursors: dict[str, int]
    more: bool


class DevTokenRequest(_Body):
    """A request for a development token."""

    user: Annotated[str, Field(pattern=USER_PATTERN)]


class DevTokenReply(_Body):
    """A development token, signed with the edge's secret."""

    user: str
    token: str
    expires_in_s: int
