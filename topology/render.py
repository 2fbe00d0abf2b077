"""Render nats-server configurations from a topology.

nats-server reads JSON as a configuration file, so configs are built as
dictionaries and written with `json.dumps`: no template can produce a
syntactically broken file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.subjects import HUB_DOMAIN
from topology.credentials import (
    CORE_USER,
    OPS_USER,
    ROUTE_USER,
    SYSTEM_USER,
    edge_user,
    leaf_user,
    password_hash,
)
from topology.model import HubNode, Region, Tls, Topology
from topology.permissions import (
    core_permissions,
    edge_permissions,
    leaf_link_permissions,
)

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
# Every client, edge, core worker and leaf link works in the application
# account. The system account is for operators' monitoring requests only, and
# no leaf link binds it, so it never crosses between servers.
APP_ACCOUNT = "APP"
SYSTEM_ACCOUNT = "SYS"

# Plaintext passwords of the mesh's NATS users, by user name.
Passwords = Mapping[str, str]
# Marks a password a deployment fills in at boot; URL-safe, so it may stand
# in route and leaf URLs.
PASSWORD_PLACEHOLDER_PREFIX = "CHATMESH_NATS_PASSWORD_"


def hub_node_config(
    topology: Topology, node: HubNode, data_dir: Path, passwords: Passwords
) -> dict[str, Any]:
    """Return the nats-server config of one hub node."""
    app_users = [
        _user(CORE_USER, passwords, core_permissions(topology)),
        _user(OPS_USER, passwords),
        *[
            _user(
                leaf_user(r.name),
                passwords,
                leaf_link_permissions(r, topology.links.benchmark_subjects),
            )
            for r in topology.regions
        ],
    ]
    config: dict[str, Any] = {
        "server_name": node.name,
        "listen": f"{node.host}:{node.client_port}",
        "http": f"{node.host}:{node.monitor_port}",
        "ping_interval": PING_INTERVAL,
        "ping_max": PING_MAX,
        "jetstream": _jetstream(data_dir / node.name, HUB_DOMAIN, sync_always=False),
        "leafnodes": {"listen": f"{node.host}:{node.leaf_port}"},
        **_accounts(app_users, passwords),
    }
    tls = topology.tls
    if tls is not None:
        config["tls"] = _server_tls(tls, verify=tls.verify_clients)
        config["leafnodes"]["tls"] = _server_tls(tls, verify=True)
    if len(topology.hub.nodes) > 1:
        config["cluster"] = _cluster(topology, node, passwords)
    return config


def _cluster(topology: Topology, node: HubNode, passwords: Passwords) -> dict[str, Any]:
    """Return the routes between hub nodes, authenticated and, with TLS, mutual."""
    route_login = f"{ROUTE_USER}:{passwords[ROUTE_USER]}@"
    cluster: dict[str, Any] = {
        "name": f"{topology.name}-hub",
        "listen": f"{node.host}:{node.cluster_port}",
        "authorization": {
            "user": ROUTE_USER,
            "password": _stored(passwords[ROUTE_USER]),
        },
        "routes": [
            f"nats-route://{route_login}{peer.host}:{peer.cluster_port}"
            for peer in topology.hub.nodes
            if peer.name != node.name
        ],
    }
    if topology.tls is not None:
        cluster["tls"] = _server_tls(topology.tls, verify=True)
    return cluster


def leaf_config(
    topology: Topology,
    region: Region,
    data_dir: Path,
    passwords: Passwords,
    hub_urls: list[str] | None = None,
) -> dict[str, Any]:
    """Return the nats-server config of a region's leaf node.

    `hub_urls` (`nats-leaf://host:port`, without credentials) replaces the
    hub's leaf-node addresses, to route the link through a proxy such as
    the benchmark's delay proxy.
    """
    leaf = region.leaf
    link = leaf_user(region.name)
    remote = _hub_remote(topology, region, f"{link}:{passwords[link]}@", hub_urls)
    remote["account"] = APP_ACCOUNT
    app_users = [
        _user(OPS_USER, passwords),
        *[
            _user(edge_user(e.name), passwords, edge_permissions(region.name, e.name))
            for e in region.edges
        ],
    ]
    config: dict[str, Any] = {
        "server_name": f"leaf-{region.name}",
        "listen": f"{leaf.host}:{leaf.client_port}",
        "http": f"{leaf.host}:{leaf.monitor_port}",
        "ping_interval": PING_INTERVAL,
        "ping_max": PING_MAX,
        "jetstream": _jetstream(
            data_dir / f"leaf-{region.name}", region.name, sync_always=True
        ),
        "leafnodes": {"reconnect": LEAF_RECONNECT, "remotes": [remote]},
        **_accounts(app_users, passwords),
    }
    tls = topology.tls
    if tls is not None:
        config["tls"] = _server_tls(tls, verify=tls.verify_clients)
        remote["tls"] = {
            "ca_file": tls.ca_file,
            "cert_file": tls.client_cert_file,
            "key_file": tls.client_key_file,
            "timeout": tls.handshake_timeout_s,
        }
    return config


def _accounts(app_users: list[dict[str, Any]], passwords: Passwords) -> dict[str, Any]:
    return {
        "accounts": {
            APP_ACCOUNT: {"jetstream": "enabled", "users": app_users},
            SYSTEM_ACCOUNT: {"users": [_user(SYSTEM_USER, passwords)]},
        },
        "system_account": SYSTEM_ACCOUNT,
    }


def _user(
    name: str, passwords: Passwords, permissions: dict[str, Any] | None = None
) -> dict[str, Any]:
    user: dict[str, Any] = {"user": name, "password": _stored(passwords[name])}
    if permissions is not None:
        user["permissions"] = permissions
    return user


def _stored(password: str) -> str:
    """Return what a server config stores for a password: its bcrypt hash.

    A placeholder, which a deployment replaces at boot, stays as is.
    """
    if password.startswith(PASSWORD_PLACEHOLDER_PREFIX):
        return password
    return _hash(password)


@lru_cache(maxsize=256)
def _hash(password: str) -> str:
    # One hash per password and process: bcrypt is slow on purpose.
    return password_hash(password)


def _server_tls(tls: Tls, verify: bool) -> dict[str, Any]:
    return {
        "cert_file": tls.cert_file,
        "key_file": tls.key_file,
        "ca_file": tls.ca_file,
        "verify": verify,
        "timeout": tls.handshake_timeout_s,
    }


def _hub_remote(
    topology: Topology, region: Region, login: str, hub_urls: list[str] | None
) -> dict[str, Any]:
    """Return the leaf's remote: every hub node, the link proxy, or `hub_urls`.

    Behind a proxy the leaf must ignore the hub nodes' own addresses, which
    the hub sends it once connected, or it would bypass the proxy.
    """
    if hub_urls is not None:
        urls = [u.replace("nats-leaf://", f"nats-leaf://{login}", 1) for u in hub_urls]
        return {"urls": urls, "ignore_discovered_servers": True}
    if not topology.links.proxy:
        nodes = topology.hub.nodes
        return {"urls": [f"nats-leaf://{login}{n.host}:{n.leaf_port}" for n in nodes]}
    ports = region.leaf.hub_link_ports
    if len(ports) != len(topology.hub.nodes):
        raise ValueError(
            f"region {region.name!r} has {len(ports)} hub link port(s) for "
            f"{len(topology.hub.nodes)} hub node(s); render from a topology "
            "whose ports are resolved (topology.launcher.resolve_ports)"
        )
    host = topology.links.host
    urls = [f"nats-leaf://{login}{host}:{port}" for port in ports]
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
    """Write a config as JSON with mode 0600, because it contains secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def hub_leaf_urls(topology: Topology) -> list[str]:
    return [f"nats-leaf://{n.host}:{n.leaf_port}" for n in topology.hub.nodes]


def hub_client_urls(topology: Topology) -> list[str]:
    scheme = _client_scheme(topology)
    return [f"{scheme}://{n.host}:{n.client_port}" for n in topology.hub.nodes]


def leaf_client_url(topology: Topology, region: Region) -> str:
    scheme = _client_scheme(topology)
    return f"{scheme}://{region.leaf.host}:{region.leaf.client_port}"


def _client_scheme(topology: Topology) -> str:
    return "tls" if topology.tls is not None else "nats"
