"""Render the variables of the Terraform root module in `terraform/` from a topology.

The topology describes what runs: hub nodes, regions, edges, the store. A
deployment also needs to know where: the AWS region of each chatmesh region, VPC CIDRs,
private addresses and instance sizes. Those come from a small `deploy` mapping
whose fields all have defaults (see `DeploySettings`), so the topology model
stays the same for a mesh on one machine and for AWS.

Every instance gets a fixed private IP. The renderer writes those addresses
into a copy of the topology (`deployed_topology`) and renders the nats-server
configs from that copy with the same functions `chatmesh up` uses
(`topology/render.py`). So the configs, the topology JSON that edges and core
workers read, and the security groups Terraform builds all name the same
addresses and ports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ChatmeshError
from topology.credentials import mesh_users
from topology.model import Region, Topology
from topology.render import PASSWORD_PLACEHOLDER_PREFIX, hub_node_config, leaf_config

# chatmesh region names with a well-known AWS region. Other names need
# `deploy["regions"][name]["aws_region"]`.
AWS_REGION_BY_NAME: Final[Mapping[str, str]] = {
    "ap-south": "ap-south-1",
    "eu-west": "eu-west-1",
    "us-east": "us-east-1",
}
# AWS regions that terraform/providers.tf and terraform/main.tf have a provider
# alias and module blocks for; terraform/locals.tf keeps the same list.
SUPPORTED_AWS_REGIONS: Final[tuple[str, ...]] = ("ap-south-1", "eu-west-1", "us-east-1")

# Ports used where the topology leaves a port at 0 ("pick a free port"), which
# means nothing on a dedicated instance. Ports the topology sets are kept.
NATS_CLIENT_PORT: Final = 4222
NATS_CLUSTER_PORT: Final = 6222
NATS_LEAF_PORT: Final = 7422
NATS_MONITOR_PORT: Final = 8222
EDGE_PORT: Final = 8101
CQL_PORT: Final = 9042
SCYLLA_STORAGE_PORT: Final = 7000

# Parent of every JetStream store_dir on the instances. Terraform mounts the
# JetStream volume at the parent directory of the rendered store_dir.
NATS_DATA_DIR: Final = Path("/var/lib/nats")

HUB_VPC_CIDR: Final = IPv4Network("10.0.0.0/16")
# Region i (0-based, in topology order) gets 10.(i + 1).0.0/16.
REGION_VPC_CIDR_FORMAT: Final = "10.{}.0.0/16"
MIN_VPC_PREFIX: Final = 16
MAX_VPC_PREFIX: Final = 20

# Each VPC is cut into 16 equal subnets: slots 0-2 are the public subnets and
# slots 8-10 the private ones, one per availability zone.
# Zones are named explicitly, by default the first ones of the AWS region
# ("<region>a", "<region>b", ...), so a zone that AWS adds later moves nothing.
ZONE_LETTERS: Final = "abc"
SUBNET_EXTRA_BITS: Final = 4
PUBLIC_SUBNET_SLOT: Final = 0
PRIVATE_SUBNET_SLOT: Final = 8


@dataclass(frozen=True)
class HostRange:
    """Host numbers that one kind of instance takes inside a private subnet.

    AWS reserves the first four addresses and the last one of every subnet,
    so no range starts below 4. Ranges of instances that share a VPC do not
    overlap, so adding an edge never moves a store node.
    """

    first: int
    count: int


LEAF_HOSTS: Final = HostRange(first=10, count=1)
HUB_NODE_HOSTS: Final = HostRange(first=10, count=10)
CORE_HOSTS: Final = HostRange(first=20, count=10)
EDGE_HOSTS: Final = HostRange(first=20, count=80)
STORE_HOSTS: Final = HostRange(first=100, count=40)


class DeployError(ChatmeshError):
    """Deploy settings are invalid or do not fit the topology."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


AwsRegion = Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")]
DnsLabel = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class InstanceTypes(_Frozen):
    """EC2 instance types by role. A role left unset keeps the Terraform default."""

    hub: str | None = None
    core: str | None = None
    leaf: str | None = None
    edge: str | None = None
    store: str | None = None


class VolumeSizes(_Frozen):
    """EBS data volume sizes in GiB. A size left unset keeps the Terraform default."""

    jetstream: int | None = Field(default=None, ge=10, le=16384)
    core: int | None = Field(default=None, ge=10, le=16384)
    store: int | None = Field(default=None, ge=10, le=16384)


class RegionDeploy(_Frozen):
    """Deployment settings of one chatmesh region."""

    aws_region: AwsRegion | None = None
    vpc_cidr: IPv4Network | None = None
    # Zone names, one per subnet; default: the first zone_count zones.
    availability_zones: list[str] | None = None
    # Defaults to the region's store_replication_factor with the scylla backend.
    store_nodes: int | None = Field(default=None, ge=1, le=STORE_HOSTS.count)
    # An S3 bucket in the same AWS region for the load balancer's access logs.
    access_logs_bucket: str | None = None
    # Set to false, and apply, before removing the region.
    load_balancer_deletion_protection: bool | None = None

    @field_validator("vpc_cidr")
    @classmethod
    def _check_prefix(cls, value: IPv4Network | None) -> IPv4Network | None:
        if value is not None:
            _require_vpc_prefix(value)
        return value


class DeploySettings(_Frozen):
    """Everything a deployment needs that the topology does not contain.

    Every field has a default, so `render_tfvars(topology)` works without any.
    """

    hub_aws_region: AwsRegion | None = None
    hub_vpc_cidr: IPv4Network = HUB_VPC_CIDR
    hub_availability_zones: list[str] | None = None
    # Availability zones per VPC; subnets and instances spread over them.
    zone_count: int = Field(default=3, ge=2, le=len(ZONE_LETTERS))
    # An existing public Route 53 hosted zone. Default: <topology>.example.com,
    # which only serves the examples.
    public_zone: str | None = Field(
        default=None, pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
    )
    endpoint_name: DnsLabel = "chat"
    token_secret_parameter: str | None = Field(
        default=None, pattern=r"^(/[A-Za-z0-9_.-]+)+$"
    )
    monitoring_cidrs: list[IPv4Network] = Field(default_factory=list)
    instance_types: InstanceTypes = InstanceTypes()
    volume_sizes_gib: VolumeSizes = VolumeSizes()
    regions: dict[str, RegionDeploy] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("hub_vpc_cidr")
    @classmethod
    def _check_prefix(cls, value: IPv4Network) -> IPv4Network:
        _require_vpc_prefix(value)
        return value


@dataclass(frozen=True)
class Placement:
    """The location of one instance: the index of its private subnet, its address."""

    subnet_index: int
    private_ip: IPv4Address


class SubnetPlan:
    """The zones and subnets of one VPC, and fixed addresses inside them."""

    def __init__(self, vpc: IPv4Network, zones: list[str]) -> None:
        try:
            _require_vpc_prefix(vpc)
        except ValueError as exc:
            raise DeployError(str(exc)) from exc
        slots = list(vpc.subnets(prefixlen_diff=SUBNET_EXTRA_BITS))
        self.vpc = vpc
        self.zones = zones
        self.public = slots[PUBLIC_SUBNET_SLOT : PUBLIC_SUBNET_SLOT + len(zones)]
        self.private = slots[PRIVATE_SUBNET_SLOT : PRIVATE_SUBNET_SLOT + len(zones)]

    def place(self, index: int, hosts: HostRange, label: str) -> Placement:
        """Return the address of the `index`-th instance of a kind, across zones."""
        zones = len(self.private)
        subnet_index = index % zones
        offset = index // zones
        if offset >= hosts.count:
            raise DeployError(
                f"{label} is instance {index + 1} of its kind in VPC {self.vpc}, but "
                f"the address plan has room for at most {hosts.count * zones} "
                f"({hosts.count} per availability zone); use fewer of them"
            )
        return Placement(subnet_index, self.private[subnet_index][hosts.first + offset])

    def network_vars(self) -> dict[str, Any]:
        return {
            "vpc_cidr": str(self.vpc),
            "availability_zones": list(self.zones),
            "public_subnet_cidrs": [str(subnet) for subnet in self.public],
            "private_subnet_cidrs": [str(subnet) for subnet in self.private],
        }


@dataclass(frozen=True)
class AddressPlan:
    """Fixed addresses of every instance of a deployment, by name."""

    hub_aws_region: str
    hub_subnets: SubnetPlan
    hub_nodes: dict[str, Placement]
    core_workers: dict[int, Placement]
    aws_regions: dict[str, str]
    region_subnets: dict[str, SubnetPlan]
    leaves: dict[str, Placement]
    edges: dict[str, Placement]
    store_nodes: dict[str, dict[str, Placement]]


def parse_deploy(deploy: Mapping[str, Any] | None) -> DeploySettings:
    """Validate a deploy mapping; raise `DeployError` naming each bad field."""
    try:
        return DeploySettings.model_validate(dict(deploy or {}))
    except ValidationError as exc:
        lines = ["invalid deploy settings:"]
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"  {where}: {error['msg']}")
        raise DeployError("\n".join(lines)) from exc


def render_tfvars(
    topology: Topology, deploy: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the root module's variables for `topology`, as JSON-ready data.

    `deploy` contains the settings the topology lacks; see `DeploySettings`.
    Optional Terraform settings (instance types, volume sizes, load balancer
    options) appear only when `deploy` sets them, so the Terraform defaults
    apply otherwise. Raises `DeployError` for invalid deploy settings.
    """
    settings = parse_deploy(deploy)
    plan = plan_addresses(topology, settings)
    deployed = deployed_topology(topology, plan)
    tfvars: dict[str, Any] = {
        "name": deployed.name,
        "hub": _hub_vars(deployed, plan, settings),
        "regions": {
            region.name: _region_vars(deployed, region, plan, settings)
            for region in deployed.regions
        },
        "store": {
            "backend": deployed.store.backend,
            "port": deployed.store.scylla.port,
            "storage_port": deployed.store.scylla.storage_port,
            "keyspace": deployed.store.scylla.keyspace,
        },
        "dns": {
            "zone_name": settings.public_zone or f"{topology.name}.example.com",
            "endpoint_name": settings.endpoint_name,
        },
        "token_secret_parameter": (
            settings.token_secret_parameter or f"/chatmesh/{topology.name}/token-secret"
        ),
        "topology_json": deployed.model_dump_json(),
    }
    if settings.monitoring_cidrs:
        tfvars["monitoring_cidrs"] = [str(cidr) for cidr in settings.monitoring_cidrs]
    if settings.tags:
        tfvars["tags"] = dict(settings.tags)
    return tfvars


def render_nats_configs(
    topology: Topology, deploy: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Return every nats-server config of the deployment, keyed by server name.

    These are the configs that `render_tfvars` embeds, as dictionaries.
    """
    plan = plan_addresses(topology, parse_deploy(deploy))
    deployed = deployed_topology(topology, plan)
    configs = {
        node.name: hub_node_config(
            deployed, node, NATS_DATA_DIR, placeholder_passwords(deployed)
        )
        for node in deployed.hub.nodes
    }
    for region in deployed.regions:
        configs[f"leaf-{region.name}"] = leaf_config(
            deployed, region, NATS_DATA_DIR, placeholder_passwords(deployed)
        )
    return configs


def placeholder_passwords(topology: Topology) -> dict[str, str]:
    """Return a `CHATMESH_NATS_PASSWORD_<USER>` placeholder for every NATS user.

    Rendered configs must never carry a production password, so the configs
    in tfvars name each one by placeholder.
    """
    # TODO: have the boot module replace these placeholders from the secret
    # store (SSM parameters) before nats-server starts; it does not yet.
    return {
        user: PASSWORD_PLACEHOLDER_PREFIX + user.replace("-", "_").upper()
        for user in mesh_users(topology)
    }


def write_tfvars(tfvars: Mapping[str, Any], path: Path) -> Path:
    """Write tfvars as a `.tfvars.json` file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_tfvars(tfvars))
    return path


def format_tfvars(tfvars: Mapping[str, Any]) -> str:
    """Return tfvars as the JSON text that `write_tfvars` writes."""
    return json.dumps(tfvars, indent=2) + "\n"


# ---- addresses -----------------------------------------------------------------


def plan_addresses(topology: Topology, settings: DeploySettings) -> AddressPlan:
    """Assign AWS regions, VPC CIDRs and fixed private addresses to a topology."""
    known = {region.name for region in topology.regions}
    unknown = sorted(set(settings.regions) - known)
    if unknown:
        raise DeployError(
            f"deploy settings name unknown region(s) {', '.join(unknown)}; "
            f"this topology has: {', '.join(sorted(known))}"
        )

    aws_regions = {
        region.name: _aws_region(region, settings) for region in topology.regions
    }
    # The core workers run next to the hub and use the store datacenter of
    # core_store_region, so by default the hub shares that region's AWS region.
    hub_aws_region = settings.hub_aws_region or aws_regions[topology.core_store_region]
    _require_supported("hub_aws_region", hub_aws_region)

    hub_zones = _zones(
        "hub_availability_zones",
        hub_aws_region,
        settings.hub_availability_zones,
        settings,
    )
    hub_subnets = SubnetPlan(settings.hub_vpc_cidr, hub_zones)
    region_subnets: dict[str, SubnetPlan] = {}
    for index, region in enumerate(topology.regions):
        override = settings.regions.get(region.name)
        zones = _zones(
            f"regions.{region.name}.availability_zones",
            aws_regions[region.name],
            override.availability_zones if override else None,
            settings,
        )
        region_subnets[region.name] = SubnetPlan(
            _vpc_cidr(index, region, settings), zones
        )
    _require_disjoint(
        {"hub": hub_subnets.vpc}
        | {name: subnets.vpc for name, subnets in region_subnets.items()}
    )

    hub_nodes = {
        node.name: hub_subnets.place(index, HUB_NODE_HOSTS, f"hub node {node.name}")
        for index, node in enumerate(topology.hub.nodes)
    }
    core_workers = {
        worker: hub_subnets.place(worker, CORE_HOSTS, f"core worker {worker}")
        for worker in range(topology.core.workers)
    }
    leaves: dict[str, Placement] = {}
    edges: dict[str, Placement] = {}
    store_nodes: dict[str, dict[str, Placement]] = {}
    for region in topology.regions:
        subnets = region_subnets[region.name]
        leaves[region.name] = subnets.place(0, LEAF_HOSTS, f"leaf of {region.name}")
        for index, edge in enumerate(region.edges):
            edges[edge.name] = subnets.place(index, EDGE_HOSTS, f"edge {edge.name}")
        store_nodes[region.name] = {
            name: subnets.place(index, STORE_HOSTS, f"store node {name}")
            for index, name in enumerate(_store_node_names(topology, region, settings))
        }
    return AddressPlan(
        hub_aws_region=hub_aws_region,
        hub_subnets=hub_subnets,
        hub_nodes=hub_nodes,
        core_workers=core_workers,
        aws_regions=aws_regions,
        region_subnets=region_subnets,
        leaves=leaves,
        edges=edges,
        store_nodes=store_nodes,
    )


def deployed_topology(topology: Topology, plan: AddressPlan) -> Topology:
    """Return a copy of `topology` with the deployment's addresses and ports.

    Every host becomes its instance's private IP, ports left at 0 get the
    production defaults, and the ScyllaDB contact points become every store
    node of every region. `local_nodes` is switched off, because store nodes
    are instances of their own.
    """
    data = topology.model_dump()
    for node in data["hub"]["nodes"]:
        node["host"] = str(plan.hub_nodes[node["name"]].private_ip)
        _default_port(node, "client_port", NATS_CLIENT_PORT)
        _default_port(node, "cluster_port", NATS_CLUSTER_PORT)
        _default_port(node, "leaf_port", NATS_LEAF_PORT)
        _default_port(node, "monitor_port", NATS_MONITOR_PORT)
    for region in data["regions"]:
        leaf = region["leaf"]
        leaf["host"] = str(plan.leaves[region["name"]].private_ip)
        _default_port(leaf, "client_port", NATS_CLIENT_PORT)
        _default_port(leaf, "monitor_port", NATS_MONITOR_PORT)
        for edge in region["edges"]:
            edge["host"] = str(plan.edges[edge["name"]].private_ip)
            _default_port(edge, "port", EDGE_PORT)
    scylla = data["store"]["scylla"]
    _default_port(scylla, "port", CQL_PORT)
    _default_port(scylla, "storage_port", SCYLLA_STORAGE_PORT)
    # Store nodes are instances of their own; no process starts local ones.
    scylla["local_nodes"] = False
    contact_points = [
        str(placement.private_ip)
        for nodes in plan.store_nodes.values()
        for placement in nodes.values()
    ]
    if contact_points:
        scylla["contact_points"] = contact_points
    return Topology.model_validate(data)


def _aws_region(region: Region, settings: DeploySettings) -> str:
    override = settings.regions.get(region.name)
    aws_region = override.aws_region if override else None
    if aws_region is None:
        aws_region = AWS_REGION_BY_NAME.get(region.name)
    if aws_region is None:
        raise DeployError(
            f"region {region.name!r} has no default AWS region; set "
            f"deploy regions.{region.name}.aws_region to one of "
            f"{', '.join(SUPPORTED_AWS_REGIONS)}"
        )
    _require_supported(f"regions.{region.name}.aws_region", aws_region)
    return aws_region


def _require_supported(field: str, aws_region: str) -> None:
    if aws_region not in SUPPORTED_AWS_REGIONS:
        raise DeployError(
            f"{field} is {aws_region!r}, which terraform/ has no provider for; use "
            f"one of {', '.join(SUPPORTED_AWS_REGIONS)} or add it "
            f"(terraform/README.md, 'Adding an AWS region')"
        )


def _zones(
    field: str, aws_region: str, names: list[str] | None, settings: DeploySettings
) -> list[str]:
    if names is None:
        return [
            f"{aws_region}{letter}" for letter in ZONE_LETTERS[: settings.zone_count]
        ]
    if len(names) != settings.zone_count or len(set(names)) != len(names):
        raise DeployError(
            f"{field} must name {settings.zone_count} different zones "
            f"(zone_count); got {names}"
        )
    foreign = [name for name in names if not name.startswith(aws_region)]
    if foreign:
        raise DeployError(
            f"{field} names zones outside {aws_region}: {', '.join(foreign)}"
        )
    return list(names)


def _vpc_cidr(index: int, region: Region, settings: DeploySettings) -> IPv4Network:
    override = settings.regions.get(region.name)
    if override is not None and override.vpc_cidr is not None:
        return override.vpc_cidr
    return IPv4Network(REGION_VPC_CIDR_FORMAT.format(index + 1))


def _require_vpc_prefix(vpc: IPv4Network) -> None:
    if not MIN_VPC_PREFIX <= vpc.prefixlen <= MAX_VPC_PREFIX:
        raise ValueError(
            f"VPC CIDR {vpc} has prefix /{vpc.prefixlen}; use /{MIN_VPC_PREFIX} "
            f"to /{MAX_VPC_PREFIX}"
        )


def _require_disjoint(vpcs: Mapping[str, IPv4Network]) -> None:
    names = list(vpcs)
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            if vpcs[first].overlaps(vpcs[second]):
                raise DeployError(
                    f"VPC CIDRs of {first} ({vpcs[first]}) and {second} "
                    f"({vpcs[second]}) overlap; VPC peering needs disjoint CIDRs"
                )


def _store_node_names(
    topology: Topology, region: Region, settings: DeploySettings
) -> list[str]:
    if topology.store.backend != "scylla":
        return []
    override = settings.regions.get(region.name)
    count = region.store_replication_factor
    if override is not None and override.store_nodes is not None:
        count = override.store_nodes
    if count < region.store_replication_factor:
        raise DeployError(
            f"regions.{region.name}.store_nodes is {count}, below the region's "
            f"store_replication_factor {region.store_replication_factor}"
        )
    return [f"{region.name}-store-{number}" for number in range(1, count + 1)]


def _default_port(item: dict[str, Any], key: str, default: int) -> None:
    if item[key] == 0:
        item[key] = default


# ---- variables -----------------------------------------------------------------


def _hub_vars(
    deployed: Topology, plan: AddressPlan, settings: DeploySettings
) -> dict[str, Any]:
    hub: dict[str, Any] = {
        "aws_region": plan.hub_aws_region,
        "network": plan.hub_subnets.network_vars(),
        "stream_replicas": deployed.hub.stream_replicas,
        "nodes": {
            node.name: {
                **_placement_vars(plan.hub_nodes[node.name]),
                "client_port": node.client_port,
                "cluster_port": node.cluster_port,
                "leaf_port": node.leaf_port,
                "monitor_port": node.monitor_port,
                "nats_config": _config_text(
                    hub_node_config(
                        deployed, node, NATS_DATA_DIR, placeholder_passwords(deployed)
                    )
                ),
            }
            for node in deployed.hub.nodes
        },
        "core_workers": {
            f"core-{worker}": {"worker_id": worker, **_placement_vars(placement)}
            for worker, placement in plan.core_workers.items()
        },
    }
    _set_if(hub, "instance_type", settings.instance_types.hub)
    _set_if(hub, "core_instance_type", settings.instance_types.core)
    _set_if(hub, "jetstream_volume_gib", settings.volume_sizes_gib.jetstream)
    _set_if(hub, "core_volume_gib", settings.volume_sizes_gib.core)
    return hub


def _region_vars(
    deployed: Topology, region: Region, plan: AddressPlan, settings: DeploySettings
) -> dict[str, Any]:
    leaf: dict[str, Any] = {
        **_placement_vars(plan.leaves[region.name]),
        "client_port": region.leaf.client_port,
        "monitor_port": region.leaf.monitor_port,
        "nats_config": _config_text(
            leaf_config(
                deployed, region, NATS_DATA_DIR, placeholder_passwords(deployed)
            )
        ),
    }
    _set_if(leaf, "instance_type", settings.instance_types.leaf)
    _set_if(leaf, "jetstream_volume_gib", settings.volume_sizes_gib.jetstream)

    store: dict[str, Any] = {
        "replication_factor": region.store_replication_factor,
        "nodes": {
            name: _placement_vars(placement)
            for name, placement in plan.store_nodes[region.name].items()
        },
    }
    _set_if(store, "instance_type", settings.instance_types.store)
    _set_if(store, "volume_gib", settings.volume_sizes_gib.store)

    variables: dict[str, Any] = {
        "aws_region": plan.aws_regions[region.name],
        "network": plan.region_subnets[region.name].network_vars(),
        "leaf": leaf,
        "edges": {
            edge.name: {**_placement_vars(plan.edges[edge.name]), "port": edge.port}
            for edge in region.edges
        },
        "store": store,
    }
    _set_if(variables, "edge_instance_type", settings.instance_types.edge)

    override = settings.regions.get(region.name)
    load_balancer: dict[str, Any] = {}
    if override is not None:
        _set_if(load_balancer, "access_logs_bucket", override.access_logs_bucket)
        _set_if(
            load_balancer,
            "deletion_protection",
            override.load_balancer_deletion_protection,
        )
    if load_balancer:
        variables["load_balancer"] = load_balancer
    return variables


def _placement_vars(placement: Placement) -> dict[str, Any]:
    return {
        "private_ip": str(placement.private_ip),
        "subnet_index": placement.subnet_index,
    }


def _config_text(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"


def _set_if(target: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        target[key] = value
