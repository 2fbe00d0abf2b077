"""NATS permissions of each role, as nats-server config dictionaries.

- edge, on its region's leaf node: publishes its own ingest subject, requests
  the core services and reports presence. It manages its region's two leaf
  streams and reads `DELIVER_<region>` through an ordered consumer. It
  receives replies on its own inbox and presence changes, nothing else.
- core, on the hub: runs the hub's JetStream, ensures the regions' streams,
  publishes deliveries and presence changes, and replies to service requests.
- leaf link, on the hub as the leaf node's remote: carries its edges'
  requests and presence reports up and the replies to its edges down, plus
  what sourcing between its leaf streams and the hub's streams needs.
- ops, anywhere: everything in the application account.

A leaf link's permissions are seen from the leaf: `publish` is what the leaf
may send into the hub, `subscribe` what the hub may send to the leaf.
"""

from __future__ import annotations

from typing import Any

from core import subjects
from topology.credentials import CORE_INBOX_PREFIX, edge_inbox_prefix
from topology.model import Region, Topology

# Service subjects an edge requests; health is for operators only.
EDGE_SERVICES = [
    subjects.SERVICE_SYNC,
    subjects.SERVICE_USER_EXISTS,
    subjects.SERVICE_USER_REGISTER,
    subjects.SERVICE_SESSION_OPEN,
    subjects.SERVICE_GROUPS,
    subjects.SERVICE_PRESENCE,
]
STREAM_OPS = ("INFO", "CREATE", "UPDATE")

Permissions = dict[str, Any]


def edge_permissions(region: str, edge: str) -> Permissions:
    """Return the permissions of an edge on its region's leaf node."""
    deliver = subjects.region_deliver_stream(region)
    streams = [subjects.region_ingest_stream(region), deliver]
    api_calls = [
        *[f"STREAM.{op}.{stream}" for op in STREAM_OPS for stream in streams],
        # The ordered consumer on the region's deliveries: create, recreate
        # after a gap, and delete.
        f"CONSUMER.CREATE.{deliver}",
        f"CONSUMER.CREATE.{deliver}.>",
        f"CONSUMER.DELETE.{deliver}.*",
        f"CONSUMER.INFO.{deliver}.*",
    ]
    publish = [
        subjects.ingest_subject(region, edge),
        *EDGE_SERVICES,
        subjects.PRESENCE_REPORTS,
        *_js_api(region, api_calls),
        # Replies to the server's flow-control requests on that consumer, in
        # both forms that nats-server 2.15 subscribes to.
        f"$JS.FC.{deliver}.>",
        f"$JS.FC.{region}.*.{deliver}.>",
        # The delivery watchdog reads the hub DELIVER stream's info.
        *_js_api(subjects.HUB_DOMAIN, [f"STREAM.INFO.{subjects.HUB_DELIVER_STREAM}"]),
    ]
    subscribe = [
        f"{edge_inbox_prefix(edge)}.>",
        subjects.PRESENCE_CHANGES,
        subjects.PRESENCE_FULL_REQUESTS,
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def core_permissions(topology: Topology) -> Permissions:
    """Return the permissions of the core workers on the hub."""
    publish = [
        *_js_api(subjects.HUB_DOMAIN, [">"]),
        # Acks of the sequencer's pull consumer, with or without the domain.
        f"$JS.ACK.{subjects.HUB_INGEST_STREAM}.>",
        f"$JS.ACK.{subjects.HUB_DOMAIN}.*.{subjects.HUB_INGEST_STREAM}.>",
        subjects.DELIVER_ALL,
        subjects.PRESENCE_CHANGES,
        subjects.PRESENCE_FULL_REQUESTS,
    ]
    for region in topology.regions:
        api = subjects.leaf_js_api(region.name)
        for stream in _region_streams(region.name):
            publish.extend(f"{api}.STREAM.{op}.{stream}" for op in STREAM_OPS)
    subscribe = [
        "chatmesh.core.>",
        subjects.PRESENCE_REPORTS,
        f"{CORE_INBOX_PREFIX}.>",
    ]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": subscribe},
        # Replies to the edges' requests go to their inboxes, whatever they are.
        "allow_responses": True,
    }


def leaf_link_permissions(
    region: Region, benchmark_subjects: bool = False
) -> Permissions:
    """Return the permissions of a region's leaf node on its link to the hub.

    With `benchmark_subjects`, the link also carries the bare-NATS
    benchmark's subjects both ways.

    Sourcing uses subjects that nats-server 2.15 names with random tokens:
    `$JS.S.<id>` for the messages a source consumer pushes and `$JSC.R.<id>`
    for consumer-create replies. Those cannot be scoped to one region.
    """
    name = region.name
    hub = subjects.HUB_DOMAIN
    hub_deliver = subjects.HUB_DELIVER_STREAM
    ingest = subjects.region_ingest_stream(name)
    source_filter = subjects.deliver_subject(name)
    publish = [
        *EDGE_SERVICES,
        subjects.PRESENCE_REPORTS,
        # DELIVER_<region> sources the hub's DELIVER through a consumer that
        # the leaf's JetStream creates, filtered to this region's subject.
        *_js_api(hub, [f"CONSUMER.CREATE.{hub_deliver}.*.{source_filter}"]),
        # The edges' delivery watchdog reads the hub DELIVER stream's info.
        *_js_api(hub, [f"STREAM.INFO.{hub_deliver}"]),
        f"$JS.FC.{hub_deliver}.>",
        f"$JS.FC.{hub}.*.{hub_deliver}.>",
        # The hub sources INGEST_<region>: replies to its consumer create and
        # the messages that consumer pushes.
        "$JSC.R.*",
        "$JS.S.*",
        # Replies to the core's stream requests to this leaf's domain.
        f"{CORE_INBOX_PREFIX}.>",
        "$LDS.>",
    ]
    subscribe = [
        *[f"{edge_inbox_prefix(edge.name)}.>" for edge in region.edges],
        subjects.PRESENCE_CHANGES,
        subjects.PRESENCE_FULL_REQUESTS,
        f"{subjects.leaf_js_api(name)}.>",
        f"$JS.FC.{ingest}.>",
        f"$JS.FC.{name}.*.{ingest}.>",
        "$JSC.R.*",
        "$JS.S.*",
        "$LDS.>",
    ]
    if benchmark_subjects:
        publish.append(f"{subjects.BENCHMARK_PREFIX}.>")
        subscribe.append(f"{subjects.BENCHMARK_PREFIX}.>")
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def _js_api(domain: str, calls: list[str]) -> list[str]:
    """Return JetStream API subjects as the client sends them and as checked.

    A client addresses a domain as `$JS.<domain>.API.>`. On the server of
    that domain, nats-server 2.15 maps this to `$JS.API.>` and checks the
    permissions on the mapped subject, so both forms are allowed.
    """
    local = [f"$JS.API.{call}" for call in calls]
    remote = [f"$JS.{domain}.API.{call}" for call in calls]
    return [*remote, *local]


def _region_streams(region: str) -> list[str]:
    return [
        subjects.region_ingest_stream(region),
        subjects.region_deliver_stream(region),
    ]
