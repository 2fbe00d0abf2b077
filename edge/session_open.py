"""Announce a new local session to the core, for every transport alike.

A session must reach the core's registry before the client's first sync,
so that a message committed after that sync is routed to this region.
"""

from __future__ import annotations

import nats.errors
import structlog

from core.errors import ChatmeshError
from core.schema import SessionOpen
from edge.runtime import EdgeRuntime

log = structlog.get_logger(__name__)


async def announce_session(runtime: EdgeRuntime, user: str, connection: str) -> bool:
    """Register `user` and report their session on this edge to the core.

    Return False if a request to the core failed. The failure is logged and
    the session goes on: the edge's next presence report routes the user, and
    sync still works.
    """
    ident = runtime.identity
    try:
        await runtime.core.register_user(user)
        await runtime.core.open_session(
            SessionOpen(user=user, region=ident.region.name, edge=ident.edge.name)
        )
    except (ChatmeshError, nats.errors.Error, TimeoutError) as exc:
        log.warning(
            "session.open_failed",
            user=user,
            connection=connection,
            edge=ident.edge.name,
            error=repr(exc),
        )
        return False
    return True
