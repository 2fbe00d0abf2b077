"""The topology model and the nats-server configs rendered from it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import small_topology
from topology.credentials import mesh_users
from topology.launcher import Mesh, nats_server_binary, resolve_ports
from topology.model import (
    TopologyError,
    default_topology_path,
    load_topology,
    parse_topology,
)
from topology.processes import ProcessFailed
from topology.render import hub_node_config, leaf_config, write_config


def passwords_for(topology) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {user: f"password-of-{user}" for user in mesh_users(topology)}


def base() -> dict:  # type: ignore[type-arg]
    return {
        "name": "t",
        "hub": {"nodes": [{"name": "hub-1"}]},
        "regions": [{"name": "eu-west", "edges": [{"name": "eu-1"}]}],
    }


def test_default_topology_loads() -> None:
    topology = load_topology(default_topology_path())
    assert [r.name for r in topology.regions] == ["eu-west", "us-east"]
    assert topology.store.backend == "sqlite"


def test_store_backend_override() -> None:
    topology = load_topology(default_topology_path())

    scylla = topology.with_store_backend("scylla")
    sqlite = scylla.with_store_backend("sqlite")

    assert scylla.store.backend == "scylla"
    assert scylla.store.scylla.local_nodes is True
    assert scylla.store.scylla.keyspace == topology.store.scylla.keyspace
    assert sqlite.store.backend == "sqlite"
    assert topology.store.scylla.local_nodes is False


@pytest.mark.parametrize(
    ("mutate", "field", "value"),
    [
        (
            lambda t: t["regions"][0].update(name="EU West"),
            "regions.0.name",
            "'EU West'",
        ),
        (lambda t: t["regions"][0].update(edges=[]), "regions.0.edges", None),
        (
            lambda t: t["hub"]["nodes"][0].update(client_port=70000),
            "hub.nodes.0.client_port",
            "70000",
        ),
        (lambda t: t.update(colour="blue"), "colour", "'blue'"),
        (
            lambda t: (
                t["store"].update(backend="mongo")
                if "store" in t
                else t.update(store={"backend": "mongo"})
            ),
            "store.backend",
            "'mongo'",
        ),
        (lambda t: t.pop("hub"), "hub", None),
        (
            lambda t: t.update(limits={"max_content_bytes": 0}),
            "limits.max_content_bytes",
            "0",
        ),
    ],
)
def test_invalid_topology_names_field(mutate, field: str, value: str | None) -> None:  # type: ignore[no-untyped-def]
    raw = base()
    mutate(raw)
    with pytest.raises(TopologyError) as caught:
        parse_topology(raw, source="test.yaml")
    message = str(caught.value)
    assert "test.yaml" in message
    assert field in message
    if value is not None:
        assert value in message


def test_duplicate_names_rejected() -> None:
    raw = base()
    raw["regions"].append({"name": "eu-west", "edges": [{"name": "eu-2"}]})
    with pytest.raises(TopologyError, match="'eu-west' appears twice"):
        parse_topology(raw)


def test_replicas_above_hub_size_rejected() -> None:
    raw = base()
    raw["hub"]["stream_replicas"] = 3
    with pytest.raises(
        TopologyError, match="stream_replicas is 3 but the hub has only 1"
    ):
        parse_topology(raw)


def test_unreadable_file_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(TopologyError, match=r"broken\.yaml is not valid YAML"):
        load_topology(bad)
    with pytest.raises(TopologyError, match="cannot read topology file"):
        load_topology(tmp_path / "missing.yaml")


def test_resolve_ports_fills_zeros() -> None:
    topology = resolve_ports(parse_topology(base()))
    node = topology.hub.nodes[0]
    ports = [
        node.client_port,
        node.leaf_port,
        node.monitor_port,
        topology.regions[0].edges[0].port,
    ]
    assert all(port > 0 for port in ports)
    assert len(set(ports)) == len(ports)


def test_rendered_configs(tmp_path: Path) -> None:
    topology = resolve_ports(load_topology(default_topology_path()))
    passwords = passwords_for(topology)
    hub = hub_node_config(topology, topology.hub.nodes[0], tmp_path, passwords)
    leaf = leaf_config(topology, topology.regions[0], tmp_path, passwords)

    assert hub["jetstream"]["domain"] == "hub"
    assert "cluster" not in hub
    assert leaf["jetstream"]["domain"] == "eu-west"
    assert leaf["jetstream"]["sync_interval"] == "always"
    remote = leaf["leafnodes"]["remotes"][0]
    assert remote["urls"] == [
        "nats-leaf://leaf-eu-west:password-of-leaf-eu-west@127.0.0.1:7422"
    ]
    assert remote["account"] == "APP"
    assert hub["system_account"] == "SYS"
    assert hub["accounts"]["APP"]["jetstream"] == "enabled"
    assert "jetstream" not in hub["accounts"]["SYS"]
    hub_users = {u["user"]: u for u in hub["accounts"]["APP"]["users"]}
    assert set(hub_users) == {"core", "ops", "leaf-eu-west", "leaf-us-east"}
    assert hub_users["core"]["password"].startswith("$2")
    leaf_users = {u["user"] for u in leaf["accounts"]["APP"]["users"]}
    assert leaf_users == {"ops", "edge-eu-west-1"}
    assert "password-of" not in json.dumps(hub)


def test_benchmark_subjects_cross_leaf_links_only_when_on(tmp_path: Path) -> None:
    bench = "chatmesh.bench.>"
    for enabled in (False, True):
        raw = base()
        raw["links"] = {"benchmark_subjects": enabled}
        topology = resolve_ports(parse_topology(raw))
        hub = hub_node_config(
            topology, topology.hub.nodes[0], tmp_path, passwords_for(topology)
        )
        users = {u["user"]: u for u in hub["accounts"]["APP"]["users"]}
        link = users["leaf-eu-west"]["permissions"]

        assert (bench in link["publish"]["allow"]) is enabled
        assert (bench in link["subscribe"]["allow"]) is enabled


def test_three_node_hub_has_routes(tmp_path: Path) -> None:
    raw = base()
    raw["hub"] = {
        "nodes": [{"name": f"hub-{i}"} for i in (1, 2, 3)],
        "stream_replicas": 3,
    }
    topology = resolve_ports(parse_topology(raw))
    config = hub_node_config(
        topology, topology.hub.nodes[0], tmp_path, passwords_for(topology)
    )
    assert len(config["cluster"]["routes"]) == 2
    assert config["cluster"]["authorization"]["user"] == "route"


def test_rendered_configs_pass_nats_server_check(tmp_path: Path) -> None:
    topology = resolve_ports(load_topology(default_topology_path()))
    passwords = passwords_for(topology)
    paths = [
        write_config(
            hub_node_config(topology, topology.hub.nodes[0], tmp_path, passwords),
            tmp_path / "hub.conf",
        ),
        write_config(
            leaf_config(topology, topology.regions[1], tmp_path, passwords),
            tmp_path / "leaf.conf",
        ),
    ]
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o600
        json.loads(path.read_text())
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr


def three_hub_path() -> Path:
    return default_topology_path().parent / "three-hub.yaml"


def test_three_hub_topology_loads() -> None:
    topology = load_topology(three_hub_path())

    assert len(topology.hub.nodes) == 3
    assert topology.hub.stream_replicas == 3
    assert topology.links.proxy is True
    assert [r.name for r in topology.regions] == ["eu-west", "us-east"]


def test_proxy_ports_resolved_per_hub_node() -> None:
    topology = resolve_ports(load_topology(three_hub_path()))

    assert topology.links.control_port > 0
    for region in topology.regions:
        assert len(region.leaf.hub_link_ports) == 3
        assert all(port > 0 for port in region.leaf.hub_link_ports)


def test_leaf_behind_proxy_ignores_discovered_hub(tmp_path: Path) -> None:
    topology = resolve_ports(load_topology(three_hub_path()))
    region = topology.regions[0]

    passwords = passwords_for(topology)
    config = leaf_config(topology, region, tmp_path, passwords)
    remote = config["leafnodes"]["remotes"][0]

    login = f"leaf-{region.name}:{passwords[f'leaf-{region.name}']}@"
    assert remote["urls"] == [
        f"nats-leaf://{login}127.0.0.1:{port}" for port in region.leaf.hub_link_ports
    ]
    assert remote["ignore_discovered_servers"] is True


def test_three_hub_configs_pass_nats_server_check(tmp_path: Path) -> None:
    topology = resolve_ports(load_topology(three_hub_path()))
    passwords = passwords_for(topology)
    configs = [
        hub_node_config(topology, node, tmp_path, passwords)
        for node in topology.hub.nodes
    ] + [
        leaf_config(topology, region, tmp_path, passwords)
        for region in topology.regions
    ]
    for index, config in enumerate(configs):
        path = write_config(config, tmp_path / f"{index}.conf")
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr


def test_link_ports_must_match_hub_nodes() -> None:
    raw = base()
    raw["regions"][0]["leaf"] = {"hub_link_ports": [7001, 7002]}
    with pytest.raises(TopologyError, match="hub_link_ports has 2 port"):
        parse_topology(raw)


def three_regions() -> dict:  # type: ignore[type-arg]
    raw = base()
    raw["regions"] += [
        {"name": "us-east", "edges": [{"name": "us-1"}]},
        {"name": "ap-south", "edges": [{"name": "ap-1"}]},
    ]
    return raw


def test_regions_by_nearness_follows_failover_order() -> None:
    raw = three_regions()
    raw["regions"][0]["failover_order"] = ["ap-south"]
    topology = parse_topology(raw)

    eu_view = [r.name for r in topology.regions_by_nearness("eu-west")]
    us_view = [r.name for r in topology.regions_by_nearness("us-east")]

    assert eu_view == ["eu-west", "ap-south", "us-east"]
    assert us_view == ["us-east", "eu-west", "ap-south"]


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (["eu-west"], "lists itself in failover_order"),
        (["mars"], "unknown region 'mars'"),
        (["us-east", "us-east"], "'us-east' appears twice"),
    ],
)
def test_invalid_failover_order_rejected(order: list[str], message: str) -> None:
    raw = three_regions()
    raw["regions"][0]["failover_order"] = order
    with pytest.raises(TopologyError, match=message):
        parse_topology(raw)


def test_mesh_refuses_port_in_use(tmp_path: Path) -> None:
    mesh = Mesh(small_topology(), tmp_path / "mesh")
    edge = mesh.topology.regions[1].edges[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((edge.host, edge.port))
        holder.listen()

        with pytest.raises(ProcessFailed) as failed:
            asyncio.run(mesh.start())

    assert f"{edge.host}:{edge.port} is already in use" in str(failed.value)
    assert "edge-us-east-1 cannot start" in str(failed.value)
    assert not any(proc.running() for proc in mesh.processes.values())
