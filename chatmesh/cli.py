"""The `chatmesh` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from pathlib import Path

import click

from chatmesh.chaos_cli import chaos
from chatmesh.measure_cli import bench, bench_presence, capacity, status
from chatmesh.options import chosen_topology as _load
from chatmesh.options import run_dir_option, store_option, topology_option
from chatmesh.paths import region_url
from chatmesh.topology_cli import topology
from core.logs import configure_logging
from core.schema import USER_PATTERN
from core.tokens import DEFAULT_TTL_S, KeyStore, KeyStoreError, mint_token
from topology.credentials import CORE_INBOX_PREFIX, CORE_USER, client_auth
from topology.launcher import Mesh, RunLayout
from topology.model import (
    StoreBackend,
    Topology,
    TopologyError,
    parse_topology,
)
from topology.processes import ProcessFailed


@click.group()
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much the processes log.",
)
def main(log_level: str) -> None:
    """Run and use a chatmesh mesh."""
    configure_logging(log_level)


main.add_command(chaos)


@main.command()
@topology_option
@run_dir_option
@store_option
def up(topology_file: Path | None, run_dir: Path, store: StoreBackend | None) -> None:
    """Start a whole mesh on this machine and run it until Ctrl-C or SIGTERM."""
    topology = _load(topology_file)
    if store is not None:
        topology = topology.with_store_backend(store)
    try:
        asyncio.run(_run_mesh(topology, run_dir))
    except ProcessFailed as exc:
        raise click.ClickException(f"the mesh did not start: {exc}") from exc


async def _run_mesh(topology: Topology, run_dir: Path) -> None:
    mesh = Mesh(topology, run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: the children run in sessions of their own, so closing the
    # terminal would otherwise leave them running.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    supervisor: asyncio.Task[None] | None = None
    try:
        await mesh.start()
        _print_endpoints(mesh, run_dir)
        supervisor = asyncio.create_task(mesh.supervise())
        await stop.wait()
    finally:
        try:
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
        finally:
            mesh.stop()


def _print_endpoints(mesh: Mesh, run_dir: Path) -> None:
    endpoints = mesh.endpoints()
    click.echo(f"chatmesh {mesh.topology.name} is up (run dir: {run_dir})")
    click.echo(f"  hub: {', '.join(endpoints['hub'])}")
    for region, info in endpoints["regions"].items():
        for edge, url in info["edges"].items():
            click.echo(f"  {region}: edge {edge} at {url} (leaf {info['leaf']})")
            page = url.replace("ws://", "http://", 1).removesuffix("/v1/ws") + "/"
            click.echo(f"  {region}: web page at {page}")
    users = ", ".join(mesh.topology.dev_users) or "none (set dev_users)"
    click.echo(f"Development users: {users}")
    click.echo(
        f"Chat with: {sys.argv[0]} chat --user alice --region "
        + mesh.topology.regions[0].name
    )
    click.echo("Stop with Ctrl-C.")


@main.command()
@click.argument("user")
@run_dir_option
@click.option(
    "--ttl",
    "ttl_s",
    type=int,
    default=DEFAULT_TTL_S,
    show_default=True,
    help="Validity in seconds.",
)
def token(user: str, run_dir: Path, ttl_s: int) -> None:
    """Print a development token for USER, signed with the mesh's newest key."""
    click.echo(_mint(run_dir, user, ttl_s))


def _mint(run_dir: Path, user: str, ttl_s: int = DEFAULT_TTL_S) -> str:
    """Sign a token for `user`, with the mesh's name in run_dir as the audience."""
    if re.fullmatch(USER_PATTERN, user) is None:
        raise click.BadParameter(
            f"invalid user name {user!r}: use 1 to 64 lowercase letters, digits, "
            "'_' or '-', starting with a letter or digit",
            param_hint="USER",
        )
    layout = RunLayout(run_dir)
    try:
        topology = parse_topology(
            json.loads(layout.topology.read_text()), source=str(layout.topology)
        )
        key = _key_store(layout).signing_key()
    except (OSError, KeyStoreError, TopologyError) as exc:
        raise click.ClickException(
            f"cannot sign a token: {exc}; start the mesh with `chatmesh up` first"
        ) from exc
    return mint_token(key, user, topology.name, ttl_s)


def _key_store(layout: RunLayout) -> KeyStore:
    return KeyStore(layout.token_private_keys, layout.token_public_keys)


@main.group()
def keys() -> None:
    """Manage the keys that sign client tokens."""


@keys.command()
@run_dir_option
def rotate(run_dir: Path) -> None:
    """Add a new signing key; tokens signed with the previous key stay valid.

    Edges reload the public keys on the next connection. The rotation after
    this one retires the previous key, so wait at least one token lifetime
    (--ttl of `chatmesh token`) between rotations.
    """
    store = _key_store(RunLayout(run_dir))
    key = store.rotate()
    click.echo(f"new signing key {key.kid}; valid keys: {', '.join(_kids(store))}")


@keys.command(name="list")
@run_dir_option
def list_keys(run_dir: Path) -> None:
    """Print the ids of the keys edges accept, the signing key first."""
    for kid in _kids(_key_store(RunLayout(run_dir))):
        click.echo(kid)


def _kids(store: KeyStore) -> list[str]:
    try:
        data = json.loads(store.public_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(
            f"cannot read {store.public_file}: {exc}; start the mesh with "
            "`chatmesh up` first"
        ) from exc
    return [str(key.get("kid")) for key in data.get("keys", [])]


@main.command()
@click.option("--user", required=True, help="Who you are.")
@click.option("--region", required=True, help="Region to connect to, e.g. eu-west.")
@run_dir_option
def chat(user: str, region: str, run_dir: Path) -> None:
    """Chat from the terminal: type `bob: hello` to send "hello" to bob."""
    from chatmesh.chat import run_chat

    try:
        url = region_url(run_dir, region)
    except (FileNotFoundError, LookupError) as exc:
        raise click.ClickException(exc.args[0] if exc.args else str(exc)) from exc
    token_text = _mint(run_dir, user)
    sys.exit(asyncio.run(run_chat(url, token_text, as_json=not sys.stdout.isatty())))


@main.command(hidden=True)
@topology_option
@run_dir_option
@click.option("--edge", "edge_name", required=True)
def edge(topology_file: Path | None, run_dir: Path, edge_name: str) -> None:
    """Run one edge process (started by `chatmesh up`)."""
    from edge.server import run_edge

    layout = RunLayout(run_dir)
    run_edge(
        _load(topology_file),
        edge_name,
        layout.token_public_keys,
        layout.nats_secrets,
        layout.token_private_keys,
    )


@main.command(hidden=True)
@topology_option
@run_dir_option
@click.option("--worker", type=int, default=0)
def core(topology_file: Path | None, run_dir: Path, worker: int) -> None:
    """Run one core worker process (started by `chatmesh up`)."""
    from core.main import run_core

    topology = _load(topology_file)
    layout = RunLayout(run_dir)
    auth = client_auth(topology, layout.nats_secrets, CORE_USER, CORE_INBOX_PREFIX)
    run_core(topology, worker, layout.data, auth)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    default=["127.0.0.1", "localhost"],
    show_default=True,
    help="Host name or IP address the server certificate is valid for (repeat).",
)
def certs(directory: Path, hosts: tuple[str, ...]) -> None:
    """Write development TLS certificates to DIRECTORY; print the `tls` section."""
    import yaml

    from topology.certs import write_dev_certificates

    tls = write_dev_certificates(directory, hosts)
    click.echo(yaml.safe_dump({"tls": tls.model_dump()}, sort_keys=False), nl=False)


@main.command(hidden=True)
@topology_option
@run_dir_option
def links(topology_file: Path | None, run_dir: Path) -> None:
    """Run the proxy on the links between leaf nodes and the hub (started by `up`)."""
    from topology.proxy import run_links

    run_links(_load(topology_file))


@main.group()
def store() -> None:
    """Manage the message store."""


@store.command()
@topology_option
@click.option(
    "--region",
    default=None,
    help="Datacenter to run the migration from. Default: the first region.",
)
def migrate(topology_file: Path | None, region: str | None) -> None:
    """Apply pending schema migrations to the topology's ScyllaDB keyspace."""
    from core.errors import StoreError
    from core.store.cql_migrations import migrate as run_migrations

    topology = _load(topology_file)
    if topology.store.backend != "scylla":
        raise click.ClickException(
            "the topology's store backend is sqlite, whose schema is created at start; "
            "migrations apply to the scylla backend"
        )
    local = region or topology.regions[0].name
    try:
        applied = asyncio.run(
            run_migrations(topology.store.scylla, topology.regions, local)
        )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if not applied:
        click.echo("schema is up to date")
    for migration in applied:
        click.echo(f"applied migration {migration.version}: {migration.name}")


for _command in (status, bench, bench_presence, capacity, topology):
    main.add_command(_command)
