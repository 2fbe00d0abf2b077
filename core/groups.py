"""Group administration, enforced at the core.

Who may do what:

| operation | who |
| --- | --- |
| create | any user; they become the owner |
| add, remove | the owner and admins; only the owner removes an admin |
| promote, demote | the owner |
| leave | any member but the owner |
| members | members |

Every change is a message in the group's conversation, committed by the
sequencer under its lock, so it is ordered with the group's messages.
"""

from __future__ import annotations

import time

import structlog

from core.errors import (
    GroupExists,
    GroupFull,
    GroupNotFound,
    InvalidRequest,
    NotAMember,
    NotAuthorized,
    UnknownRecipient,
)
from core.ids import UserId
from core.schema import (
    GroupReply,
    GroupRequest,
    GroupRole,
    GroupSummary,
    GroupView,
    Origin,
    StoredMessage,
)
from core.sequencer import Sequencer
from core.store.base import GroupRecord, MessageStore

log = structlog.get_logger(__name__)

# Membership events have no sending connection: every member's connections,
# the actor's included, get them as messages.
CORE_ORIGIN = Origin(region="", edge="", connection="")


class GroupService:
    """Apply group requests; raise a `ClientError` for a request that is not allowed."""

    def __init__(
        self, store: MessageStore, sequencer: Sequencer, size_limit: int
    ) -> None:
        self._store = store
        self._sequencer = sequencer
        self._size_limit = size_limit

    async def handle(self, request: GroupRequest) -> GroupReply:
        actor = UserId(request.actor)
        if request.op == "list":
            return await self._list(actor)
        if request.op == "can_post":
            members = await self._sequencer.members_of(request.group)
            return GroupReply(allowed=actor in members)
        if request.op == "members":
            return GroupReply(group=await self._view(request.group, actor))
        async with self._sequencer.lock:
            events = await self._change(request, actor)
        current = list(await self._sequencer.members_of(request.group))
        for event in events:
            # A removed member still receives the event that removes them.
            removed = [UserId(event.target)] if _removes(event) and event.target else []
            recipients = current + removed
            await self._sequencer.route(event, recipients, CORE_ORIGIN)
        seq = events[-1].seq if events else 0
        return GroupReply(
            group=await self._view(request.group, actor, seq, check=False)
        )

    async def _change(
        self, request: GroupRequest, actor: UserId
    ) -> list[StoredMessage]:
        if request.op == "create":
            return await self._create(request, actor)
        members = await self._existing_members(request.group)
        role = _role_of(members, actor, request.group)
        if request.op == "leave":
            return [await self._leave(request.group, actor, role)]
        target = _target(request)
        if request.op == "add":
            return [await self._add(request.group, actor, role, target, members)]
        if request.op == "remove":
            return [await self._remove(request.group, actor, role, target, members)]
        return [await self._set_role(request, actor, role, target, members)]

    async def _create(
        self, request: GroupRequest, actor: UserId
    ) -> list[StoredMessage]:
        initial = [UserId(u) for u in dict.fromkeys(request.members) if u != actor]
        if len(initial) + 1 >= self._size_limit:
            raise GroupFull(self._full_message(request.group, len(initial) + 1))
        for user in initial:
            await self._require_user(user)
        name = request.name or request.group
        record = GroupRecord(request.group, name, actor, time.time_ns() // 1_000_000)
        if not await self._store.create_group(record):
            raise GroupExists(
                f"group {request.group!r} already exists; pick another id"
            )
        seq = self._sequencer
        events = [
            await seq.commit_member_change(
                actor, request.group, "group_created", (actor, "owner"), name
            )
        ]
        for user in initial:
            events.append(
                await seq.commit_member_change(
                    actor, request.group, "member_added", (user, "member"), "member"
                )
            )
        log.info(
            "groups.created", group=request.group, owner=actor, members=len(initial) + 1
        )
        return events

    async def _add(
        self,
        group: str,
        actor: UserId,
        role: GroupRole,
        target: UserId,
        members: dict[UserId, GroupRole],
    ) -> StoredMessage:
        _require_admin(role, "add members to", group)
        if target in members:
            raise InvalidRequest(f"{target} is already a member of {group!r}")
        await self._require_user(target)
        if len(members) + 1 >= self._size_limit:
            raise GroupFull(self._full_message(group, len(members) + 1))
        event = await self._sequencer.commit_member_change(
            actor, group, "member_added", (target, "member"), "member"
        )
        log.info(
            "groups.member_added", group=group, user=target, by=actor, seq=event.seq
        )
        return event

    async def _remove(
        self,
        group: str,
        actor: UserId,
        role: GroupRole,
        target: UserId,
        members: dict[UserId, GroupRole],
    ) -> StoredMessage:
        _require_admin(role, "remove members from", group)
        target_role = members.get(target)
        if target_role is None:
            raise NotAMember(f"{target} is not a member of {group!r}")
        if target_role == "owner" or (target_role == "admin" and role != "owner"):
            raise NotAuthorized(
                f"a {role} cannot remove the {target_role} of {group!r}"
            )
        event = await self._sequencer.commit_member_change(
            actor, group, "member_removed", (target, None)
        )
        log.info(
            "groups.member_removed", group=group, user=target, by=actor, seq=event.seq
        )
        return event

    async def _leave(self, group: str, actor: UserId, role: GroupRole) -> StoredMessage:
        if role == "owner":
            raise NotAuthorized(f"the owner cannot leave {group!r}")
        event = await self._sequencer.commit_member_change(
            actor, group, "member_left", (actor, None)
        )
        log.info("groups.member_left", group=group, user=actor, seq=event.seq)
        return event

    async def _set_role(
        self,
        request: GroupRequest,
        actor: UserId,
        role: GroupRole,
        target: UserId,
        members: dict[UserId, GroupRole],
    ) -> StoredMessage:
        if role != "owner":
            raise NotAuthorized(f"only the owner of {request.group!r} changes roles")
        current = members.get(target)
        if current is None:
            raise NotAMember(f"{target} is not a member of {request.group!r}")
        if current == "owner":
            raise InvalidRequest("the owner's role cannot change")
        new_role: GroupRole = "admin" if request.op == "promote" else "member"
        return await self._sequencer.commit_member_change(
            actor, request.group, "role_changed", (target, new_role), new_role
        )

    async def _list(self, actor: UserId) -> GroupReply:
        groups = await self._store.fetch_groups_of(actor)
        summaries = []
        for group, role in sorted(groups.items()):
            record = await self._store.fetch_group(group)
            name = record.name if record else group
            summaries.append(GroupSummary(group=group, name=name, role=role))
        return GroupReply(groups=summaries)

    async def _view(
        self, group: str, actor: UserId, seq: int = 0, check: bool = True
    ) -> GroupView:
        record = await self._store.fetch_group(group)
        if record is None:
            raise GroupNotFound(f"no group {group!r}")
        members = await self._sequencer.members_of(group)
        if check and actor not in members:
            raise NotAMember(f"you are not a member of {group!r}")
        return GroupView(
            group=group,
            name=record.name,
            owner=record.owner,
            members=dict(members),
            seq=seq,
        )

    async def _existing_members(self, group: str) -> dict[UserId, GroupRole]:
        if await self._store.fetch_group(group) is None:
            raise GroupNotFound(f"no group {group!r}")
        return await self._sequencer.members_of(group)

    async def _require_user(self, user: UserId) -> None:
        if not await self._store.user_exists(user):
            raise UnknownRecipient(f"no user named {user!r}")

    def _full_message(self, group: str, count: int) -> str:
        return (
            f"group {group!r} would have {count} members; a group holds fewer than "
            f"{self._size_limit}"
        )


def _role_of(members: dict[UserId, GroupRole], actor: UserId, group: str) -> GroupRole:
    role = members.get(actor)
    if role is None:
        raise NotAMember(f"you are not a member of {group!r}")
    return role


def _require_admin(role: GroupRole, action: str, group: str) -> None:
    if role not in ("owner", "admin"):
        raise NotAuthorized(f"only the owner and admins may {action} {group!r}")


def _target(request: GroupRequest) -> UserId:
    if request.user is None:
        raise InvalidRequest(f"the {request.op} operation needs a `user`")
    return UserId(request.user)


def _removes(event: StoredMessage) -> bool:
    return event.kind in ("member_removed", "member_left") and event.target is not None
