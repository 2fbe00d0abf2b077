"""The `chatmesh topology` commands: check a topology file and render configs.

`render --terraform` writes the variables of the Terraform root module in
`terraform/`; `render --nats` writes the nats-server configs the deployment's
instances boot with. Both take the same optional deploy settings file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import yaml

from topology.model import Topology, TopologyError, default_topology_path, load_topology
from topology.render import write_config
from topology.terraform import (
    DeployError,
    format_tfvars,
    render_nats_configs,
    render_tfvars,
    write_tfvars,
)


@click.group()
def topology() -> None:
    """Check topology files and render what a deployment boots with."""


@topology.command()
@click.option(
    "--terraform",
    "target",
    flag_value="terraform",
    help="Render the Terraform variables (.tfvars.json) of terraform/.",
)
@click.option(
    "--nats",
    "target",
    flag_value="nats",
    help="Render every nats-server config of the deployment.",
)
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Topology file (YAML or JSON). Default: the shipped two-region topology.",
)
@click.option(
    "--deploy",
    "deploy_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=(
        "YAML or JSON file with deploy settings: AWS regions, VPC CIDRs, "
        "instance types, DNS zone (fields of DeploySettings in "
        "topology/terraform.py). Default: every setting at its default."
    ),
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help=(
        "With --terraform, the file to write (default: standard output). With "
        "--nats, the directory that gets one <server name>.conf per server "
        "(required)."
    ),
)
def render(
    target: str | None,
    topology_file: Path | None,
    deploy_file: Path | None,
    out: Path | None,
) -> None:
    """Render the Terraform variables or the nats-server configs of a topology."""
    if target is None:
        raise click.UsageError("missing option: pass --terraform or --nats")
    topology_data = _load_topology(topology_file)
    deploy = _load_deploy(deploy_file)
    try:
        if target == "terraform":
            tfvars = render_tfvars(topology_data, deploy)
        else:
            configs = render_nats_configs(topology_data, deploy)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from exc

    if target == "terraform":
        if out is None:
            click.echo(format_tfvars(tfvars), nl=False)
        else:
            click.echo(f"wrote {write_tfvars(tfvars, out)}", err=True)
        return
    if out is None:
        raise click.UsageError(
            "missing option: --nats writes to a directory, pass --out DIR"
        )
    for server_name, config in configs.items():
        path = write_config(config, out / f"{server_name}.conf")
        click.echo(f"wrote {path}")


@topology.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def check(file: Path) -> None:
    """Validate the topology FILE and print a summary of it."""
    topology_data = _load_topology(file)
    for line in _summary(topology_data):
        click.echo(line)


def _load_topology(topology_file: Path | None) -> Topology:
    try:
        return load_topology(topology_file or default_topology_path())
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc


def _load_deploy(deploy_file: Path | None) -> dict[str, Any]:
    if deploy_file is None:
        return {}
    try:
        raw = yaml.safe_load(deploy_file.read_text())
    except OSError as exc:
        raise click.ClickException(
            f"failed to read deploy settings file {deploy_file}: {exc.strerror}"
        ) from exc
    except yaml.YAMLError as exc:
        raise click.ClickException(
            f"deploy settings file {deploy_file} is not valid YAML: {exc}"
        ) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise click.ClickException(
            f"deploy settings file {deploy_file} must contain a mapping, "
            f"not {type(raw).__name__}"
        )
    return raw


def _summary(topology_data: Topology) -> list[str]:
    hub = topology_data.hub
    store = topology_data.store
    lines = [
        f"topology {topology_data.name} is valid",
        f"  hub: {len(hub.nodes)} node(s) ({_names(n.name for n in hub.nodes)}), "
        f"stream replicas {hub.stream_replicas}",
        f"  core: {topology_data.core.workers} worker(s)",
        f"  regions: {len(topology_data.regions)}",
    ]
    for region in topology_data.regions:
        lines.append(
            f"    {region.name}: {len(region.edges)} edge(s) "
            f"({_names(e.name for e in region.edges)}), "
            f"store replication factor {region.store_replication_factor}"
        )
    if store.backend == "scylla":
        lines.append(f"  store: scylla, keyspace {store.scylla.keyspace}")
    else:
        lines.append(f"  store: sqlite, file {store.sqlite_path}")
    return lines


def _names(names: Iterable[str]) -> str:
    return ", ".join(names)
