"""The error tree of the core, with the machine codes clients see.

Each client-facing error carries a stable `code` (for programs) and a message
(for people) that names the bad value and the way out. Mapping codes to
WebSocket close codes and HTTP statuses happens in the edge only.
"""

from __future__ import annotations


class ChatmeshError(Exception):
    """Base of every error raised by chatmesh code."""


class ClientError(ChatmeshError):
    """A request from a client that cannot be served as sent.

    `code` is stable and machine-readable; the message is for people.
    """

    code = "bad_request"

    def __init__(self, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref


class MalformedFrame(ClientError):
    code = "malformed_frame"


class ContentTooLarge(ClientError):
    code = "content_too_large"


class UnknownRecipient(ClientError):
    code = "unknown_recipient"


class InvalidRecipient(ClientError):
    code = "invalid_recipient"


class NotAuthorized(ClientError):
    code = "not_authorized"


class NotAMember(ClientError):
    code = "not_a_member"


class GroupNotFound(ClientError):
    code = "group_not_found"


class GroupExists(ClientError):
    code = "group_exists"


class GroupFull(ClientError):
    code = "group_full"


class InvalidRequest(ClientError):
    code = "invalid_request"


class InvalidToken(ClientError):
    code = "invalid_token"


class WrongEdge(ClientError):
    """The user's sessions in this region belong to another edge."""

    code = "wrong_edge"

    def __init__(self, message: str, *, owner_url: str) -> None:
        super().__init__(message)
        self.owner_url = owner_url


class RateLimited(ClientError):
    """A client sent more than a rate limit allows; it may retry after a pause."""

    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after_ms: int, ref: str | None = None
    ) -> None:
        super().__init__(message, ref=ref)
        self.retry_after_ms = retry_after_ms


class Unavailable(ClientError):
    """A dependency (the regional JetStream, the core) did not reply in time."""

    code = "unavailable"


class StoreError(ChatmeshError):
    """The message store failed; the operation may be retried."""


# Codes a core service may return, mapped back to their error class by the edge.
CLIENT_ERRORS: dict[str, type[ClientError]] = {
    cls.code: cls
    for cls in (
        ClientError,
        NotAuthorized,
        NotAMember,
        GroupNotFound,
        GroupExists,
        GroupFull,
        InvalidRequest,
        UnknownRecipient,
        InvalidRecipient,
    )
}
