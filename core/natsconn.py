"""Connect to NATS with reconnects forever and every connection change logged."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import nats
import structlog
from nats.aio.client import Client

log = structlog.get_logger(__name__)

RECONNECT_WAIT_S = 0.25
CONNECT_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class NatsAuth:
    """A NATS user's login, inbox prefix and TLS context.

    Subscribe permissions allow each process replies on its own inbox prefix
    only, so the prefix must match the user's permissions.
    """

    user: str
    password: str = field(repr=False)
    inbox_prefix: str = "_INBOX"
    tls: ssl.SSLContext | None = field(default=None, repr=False)


async def connect_nats(
    servers: list[str], name: str, auth: NatsAuth | None = None
) -> Client:
    """Open a NATS connection that retries the servers until it is closed."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", client=name, error=repr(exc))

    async def on_disconnected() -> None:
        if not nc.is_closed and not nc.is_draining:
            log.warning("nats.disconnected", client=name)

    async def on_reconnected() -> None:
        log.info("nats.reconnected", client=name, server=_server(nc))

    nc = await nats.connect(
        servers=servers,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
        connect_timeout=CONNECT_TIMEOUT_S,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        **login_options(auth),
    )
    log.info("nats.connected", client=name, server=_server(nc))
    return nc


def login_options(auth: NatsAuth | None) -> dict[str, Any]:
    """Return the `nats.connect` keyword arguments that log in as `auth`."""
    if auth is None:
        return {}
    return {
        "user": auth.user,
        "password": auth.password,
        "inbox_prefix": auth.inbox_prefix,
        "tls": auth.tls,
    }


async def close_nats(nc: Client, name: str) -> None:
    """Drain the connection, or close it if draining takes longer than a few seconds."""
    try:
        await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT_S)
    except Exception as exc:
        log.warning("nats.drain_failed", client=name, error=repr(exc))
        await nc.close()
    log.info("nats.closed", client=name)


def _server(nc: Client) -> str:
    url = nc.connected_url
    return url.netloc if url is not None else "?"
