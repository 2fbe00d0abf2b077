"""Group and presence requests, shared by every transport of the edge."""

from __future__ import annotations

from core.errors import ClientError, NotAuthorized
from core.schema import (
    GroupEvent,
    GroupFrame,
    GroupRequest,
    GroupsEvent,
    GroupsFrame,
    PresenceEvent,
    PresenceFrame,
    PresenceRequest,
)
from edge.runtime import EdgeRuntime
from edge.sessions import Connection

# Group operations that change nothing, or a group with no posts yet, need
# not wait for posts in flight.
READ_ONLY_OPS = frozenset({"members", "create"})
# How long a group change waits for the user's posts in flight to commit.
POSTS_COMMIT_WAIT_S = 2.0


async def handle_group(
    runtime: EdgeRuntime, user: str, frame: GroupFrame
) -> GroupEvent:
    """Forward a group operation to the core; raise its `ClientError` if refused.

    The user's group posts still in flight through this edge are sequenced
    first, so a change of membership comes after them in the group.
    """
    if frame.op not in READ_ONLY_OPS:
        await runtime.uncommitted.drained(user, frame.group, POSTS_COMMIT_WAIT_S)
    request = GroupRequest(
        actor=user,
        op=frame.op,
        group=frame.group,
        user=frame.user,
        name=frame.name,
        members=frame.members,
    )
    try:
        reply = await runtime.core.group(request)
    except ClientError as exc:
        exc.ref = frame.id
        raise
    assert reply.group is not None
    return GroupEvent(ref=frame.id, group=reply.group)


async def handle_groups(
    runtime: EdgeRuntime, user: str, frame: GroupsFrame
) -> GroupsEvent:
    reply = await runtime.core.group(GroupRequest(actor=user, op="list"))
    return GroupsEvent(ref=frame.id, groups=reply.groups)


async def handle_presence(
    runtime: EdgeRuntime, conn: Connection, frame: PresenceFrame
) -> PresenceEvent:
    """Return the users' states and subscribe `conn` to them if asked.

    Raises `NotAuthorized`, returning and subscribing nothing, when some
    requested users are neither contacts nor group peers.
    """
    request = PresenceRequest(actor=conn.user, users=frame.users)
    reply = await runtime.core.presence(request)
    if reply.denied:
        denied = ", ".join(reply.denied)
        raise NotAuthorized(
            f"you may see the presence of contacts and group peers only, not: {denied}",
            ref=frame.id,
        )
    if frame.subscribe:
        # NOTE: the subscription is checked once, here. It lasts until the
        # connection closes, even if the users stop being peers before that.
        runtime.sessions.watch(conn, [state.user for state in reply.users])
    return PresenceEvent(ref=frame.id, users=reply.users)
