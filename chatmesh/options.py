"""Command-line options and helpers shared by the `chatmesh` commands."""

from __future__ import annotations

from pathlib import Path

import click

from chatmesh.paths import DEFAULT_RUN_DIR
from topology.model import Topology, TopologyError, default_topology_path, load_topology

run_dir_option = click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_RUN_DIR,
    show_default=True,
    help="Directory for configs, data, logs and secrets of the local mesh.",
)
topology_option = click.option(
    "--topology",
    "topology_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Topology file (YAML or JSON). Default: the shipped two-region topology.",
)

store_option = click.option(
    "--store",
    type=click.Choice(["sqlite", "scylla"]),
    default=None,
    help=(
        "Override the topology's store backend. scylla starts one local "
        "Cassandra node per region."
    ),
)


def chosen_topology(topology_file: Path | None) -> Topology:
    """Load the topology file given on the command line, or the shipped one."""
    try:
        return load_topology(topology_file or default_topology_path())
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
