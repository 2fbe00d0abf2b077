"""Requests from an edge to the core services, over NATS request-reply."""

from __future__ import annotations

import time
from typing import TypeVar

import structlog
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

from core import subjects
from core.errors import CLIENT_ERRORS, Unavailable
from core.schema import (
    GroupReply,
    GroupRequest,
    PresenceReply,
    PresenceRequest,
    ServiceError,
    SessionOpen,
    SyncReply,
    SyncRequest,
    UserReply,
    UserRequest,
)

log = structlog.get_logger(__name__)

ReplyT = TypeVar("ReplyT", bound=BaseModel)
REQUEST_TIMEOUT_S = 3.0
# Users are never deleted, so a positive lookup is cached for good; a
# negative one only briefly, because the user may register at any moment.
NEGATIVE_TTL_S = 2.0
MEMBER_TTL_S = 5.0


class CoreClient:
    """The edge's view of the core: user directory, sync and session opens."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._known_users: set[str] = set()
        self._unknown_until: dict[str, float] = {}
        # (user, group) -> monotonic time until which membership is assumed
        self._members: dict[tuple[str, str], float] = {}

    async def user_exists(self, user: str) -> bool:
        if user in self._known_users:
            return True
        if self._unknown_until.get(user, 0.0) > time.monotonic():
            return False
        reply = await self._request(
            subjects.SERVICE_USER_EXISTS, UserRequest(user=user), UserReply
        )
        if reply.exists:
            self._known_users.add(user)
        else:
            self._unknown_until[user] = time.monotonic() + NEGATIVE_TTL_S
        return reply.exists

    async def register_user(self, user: str) -> None:
        if user not in self._known_users:
            await self._request(
                subjects.SERVICE_USER_REGISTER, UserRequest(user=user), UserReply
            )
            self._known_users.add(user)

    async def open_session(self, event: SessionOpen) -> None:
        await self._nc.request(
            subjects.SERVICE_SESSION_OPEN,
            event.model_dump_json().encode(),
            timeout=REQUEST_TIMEOUT_S,
        )

    async def fetch_sync_page(self, request: SyncRequest) -> SyncReply:
        return await self._request(subjects.SERVICE_SYNC, request, SyncReply)

    async def group(self, request: GroupRequest) -> GroupReply:
        """Run a group operation; raise the core's `ClientError` if it is refused."""
        reply = await self._request(subjects.SERVICE_GROUPS, request, GroupReply)
        if request.op == "leave" or (request.op == "remove" and request.user):
            self._members.pop((request.user or request.actor, request.group), None)
        return reply

    async def can_post(self, user: str, group: str) -> bool:
        """Return whether `user` may post to `group`, cached for a few seconds.

        The sequencer checks membership again when it commits, so a stale
        result here can only delay the rejection, never store a post. For
        that reason, while the core is unreachable, an expired positive
        result still counts, so members keep posting through a cut.
        """
        key = (user, group)
        if self._members.get(key, 0.0) > time.monotonic():
            return True
        request = GroupRequest(actor=user, op="can_post", group=group)
        try:
            reply = await self._request(subjects.SERVICE_GROUPS, request, GroupReply)
        except Unavailable:
            if key not in self._members:
                raise
            log.info("core_client.membership_from_cache", user=user, group=group)
            return True
        if reply.allowed:
            self._members[key] = time.monotonic() + MEMBER_TTL_S
        return reply.allowed

    async def presence(self, request: PresenceRequest) -> PresenceReply:
        return await self._request(subjects.SERVICE_PRESENCE, request, PresenceReply)

    async def _request(
        self, subject: str, body: BaseModel, reply_type: type[ReplyT]
    ) -> ReplyT:
        try:
            msg = await self._nc.request(
                subject, body.model_dump_json().encode(), timeout=REQUEST_TIMEOUT_S
            )
        except (NatsTimeoutError, NoRespondersError, TimeoutError) as exc:
            log.warning(
                "core_client.unavailable", subject=subject, error=type(exc).__name__
            )
            raise Unavailable(
                "the core service is unreachable; retry in a few seconds"
            ) from exc
        try:
            return reply_type.model_validate_json(msg.data)
        except ValidationError:
            error = ServiceError.model_validate_json(msg.data)
        client_error = CLIENT_ERRORS.get(error.code)
        if client_error is not None:
            raise client_error(error.error)
        log.warning("core_client.service_error", subject=subject, error=error.error)
        raise Unavailable(f"the core service failed ({error.error}); retry later")
