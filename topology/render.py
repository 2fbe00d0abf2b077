"""Render nats-server configurations from a topology.

nats-server reads JSON as a configuration file, so configs are built as
dictionaries and written with `json.dumps`: no template can produce a
syntactically broken file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.subjects import HUB_DOMAIN
from topology.model import HubNode, Region, Topology

# Silent partitions are noticed after ping_interval * ping_max (about 6 s);
# the server default is 2 minutes * 2.
PING_INTERVAL = "2s"
PING_MAX = 3
LEAF_RECONNECT = "250ms"
# JetStream flushes lazily (about every 2 minutes) unless configured otherwise. A
# leaf stores what the edge acknowledged as accepted, so a leaf fsyncs every
# write. The hub's streams are copies: a hub that loses an unflushed tail
# sources it again from the leaf, whose stream keeps it for days, so the hub
# keeps the default flush.
LEAF_SYNC_INTERVAL = "always"
MAX_MEMORY_STORE = 512 * 1024 * 1024
MAX_FILE_STORE = 8 * 1024 * 1024 * 1024


def hub_node_config(
    topology: Topology, node: HubNode, data_dir: Path
) -> dict[str, Any]:
    """Return the nats-server config of one hub node."""
    config: dict[str, Any] = {
        "server_name": node.name,
        "listen": f"{node.host}:{node.client_port}",
        "http": f"{node.host}:{node.monitor_port}",
        "ping_interval": PING_INTERVAL,
        "ping_max": PING_MAX,
        "jetstream": _jetstream(data_dir / node.name, HUB_DOMAIN, sync_always=False),
        "leafnodes": {"listen": f"{node.host}:{node.leaf_port}"},
    }
    if len(topology.hub.nodes) > 1:
        config["cluster"] = {
            "name": f"{topology.name}-hub",
            "listen": f"{node.host}:{node.cluster_port}",
            "routes": [
                f"nats-route://{peer.host}:{peer.cluster_port}"
                for peer in topology.hub.nodes
                if peer.name != node.name
            ],
        }
    return config


def leaf_config(
    topology: Topology,
    region: Region,
    data_dir: Path,
    hub_urls: list[str] | None = None,
) -> dict[str, Any]:
    """Return the nats-server config of a region's leaf node.

    `hub_urls` replaces the hub's leaf-node URLs, to route the link through
    a proxy (the benchmark's delay proxy does).
    """
    leaf = region.leaf
    if hub_urls is None:
        remote = _hub_remote(topology, region)
    else:
        # The hub would tell the leaf its real addresses, bypassing the proxy.
        remote = {"urls": hub_urls, "ignore_discovered_servers": True}
    return {
        "server_name": f"leaf-{region.name}",
        "listen": f"{leaf.host}:{leaf.client_port}",
        "http": f"{leaf.host}:{leaf.monitor_port}",
        "ping_interval": PING_INTERVAL,
        "ping_max": PING_MAX,
        "jetstream": _jetstream(
            data_dir / f"leaf-{region.name}", region.name, sync_always=True
        ),
        "leafnodes": {
            "reconnect": LEAF_RECONNECT,
            "remotes": [remote],
        },
    }


def _hub_remote(topology: Topology, region: Region) -> dict[str, Any]:
    """Return the leaf's remote that lists every hub node, or its link proxy ports.

    Behind the proxy the leaf must ignore the hub nodes' own addresses, which
    the hub sends it once connected, or it would bypass the proxy.
    """
    if not topology.links.proxy:
        urls = [f"nats-leaf://{n.host}:{n.leaf_port}" for n in topology.hub.nodes]
        return {"urls": urls}
    ports = region.leaf.hub_link_ports
    if len(ports) != len(topology.hub.nodes):
        raise ValueError(
            f"region {region.name!r} has {len(ports)} hub link port(s) for "
            f"{len(topology.hub.nodes)} hub node(s); render from a topology "
            "whose ports are resolved (topology.launcher.resolve_ports)"
        )
    host = topology.links.host
    urls = [f"nats-leaf://{host}:{port}" for port in ports]
    return {"urls": urls, "ignore_discovered_servers": True}


def _jetstream(store_dir: Path, domain: str, sync_always: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "store_dir": str(store_dir),
        "domain": domain,
        "max_memory_store": MAX_MEMORY_STORE,
        "max_file_store": MAX_FILE_STORE,
    }
    if sync_always:
        config["sync_interval"] = LEAF_SYNC_INTERVAL
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write a rendered config as JSON and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def hub_leaf_urls(topology: Topology) -> list[str]:
    return [f"nats-leaf://{n.host}:{n.leaf_port}" for n in topology.hub.nodes]


def hub_client_urls(topology: Topology) -> list[str]:
    return [f"nats://{n.host}:{n.client_port}" for n in topology.hub.nodes]


def leaf_client_url(region: Region) -> str:
    return f"nats://{region.leaf.host}:{region.leaf.client_port}"
