"""NATS subjects and stream names, in one place.

Ingest subjects live on the leaf nodes; delivery subjects on the hub; service
subjects are plain request-reply and cross leaf links by interest.
"""

from __future__ import annotations

HUB_DOMAIN = "hub"

HUB_INGEST_STREAM = "INGEST"
HUB_DELIVER_STREAM = "DELIVER"
SEQUENCER_CONSUMER = "sequencer"

SERVICE_SYNC = "chatmesh.core.sync"
SERVICE_USER_EXISTS = "chatmesh.core.users.exists"
SERVICE_USER_REGISTER = "chatmesh.core.users.register"
SERVICE_SESSION_OPEN = "chatmesh.core.sessions.open"
SERVICE_HEALTH = "chatmesh.core.health"
SERVICE_GROUPS = "chatmesh.core.groups"
SERVICE_PRESENCE = "chatmesh.core.presence"
PRESENCE_REPORTS = "chatmesh.presence.reports"
PRESENCE_CHANGES = "chatmesh.presence.changes"
# The core requests a full presence report from edges on this subject.
PRESENCE_FULL_REQUESTS = "chatmesh.presence.full"
# The bare-NATS benchmark baseline publishes under this prefix.
BENCHMARK_PREFIX = "chatmesh.bench"


def region_ingest_stream(region: str) -> str:
    """Return the name of the leaf stream that stores a region's accepted messages."""
    return f"INGEST_{region}"


def ingest_subject(region: str, edge: str) -> str:
    return f"chatmesh.ingest.{region}.{edge}"


def ingest_filter(region: str) -> str:
    return f"chatmesh.ingest.{region}.>"


def region_deliver_stream(region: str) -> str:
    """Return the name of the leaf stream that sources a region's deliveries."""
    return f"DELIVER_{region}"


def deliver_subject(region: str) -> str:
    return f"chatmesh.deliver.{region}"


DELIVER_ALL = "chatmesh.deliver.>"


def leaf_js_api(region: str) -> str:
    """Return the JetStream API prefix of a region's leaf domain, seen from the hub."""
    return f"$JS.{region}.API"


HUB_JS_API = f"$JS.{HUB_DOMAIN}.API"
