"""The measuring commands: `status`, `bench`, `bench-presence` and `capacity`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from chatmesh.options import chosen_topology as _load
from chatmesh.options import run_dir_option, topology_option
from core.errors import ChatmeshError
from topology.processes import ProcessFailed


@click.command()
@run_dir_option
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(0.1, 60),
    default=1.0,
    show_default=True,
    help="Seconds between the two scrapes that rates are computed from.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(run_dir: Path, interval_s: float, as_json: bool) -> None:
    """Show regions, edges, connections, lag and error rates of a running mesh.

    Exits with status 1 when an edge or a core worker does not respond.
    """
    import json

    from chatmesh.status import all_up, collect_status, format_status

    try:
        report = asyncio.run(collect_status(run_dir, interval_s))
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report, indent=2) if as_json else format_status(report))
    if not all_up(report):
        sys.exit(1)


@click.command()
@click.option(
    "--clients",
    type=click.IntRange(2),
    default=100,
    show_default=True,
    help="Simulated users, spread round-robin over the regions.",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(0.5),
    default=20.0,
    show_default=True,
    help="Seconds of measured sending.",
)
@click.option(
    "--warmup",
    "warmup_s",
    type=click.FloatRange(0),
    default=3.0,
    show_default=True,
    help="Seconds of unmeasured sending before the window.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Target messages/s over all clients; 0 sends flat out.",
)
@click.option(
    "--window",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Messages a client may have sent but not yet seen accepted.",
)
@click.option(
    "--group-share",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Fraction of messages sent to the sender's group instead of one user.",
)
@click.option(
    "--group-size",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    help="Members per group; below 2 means no groups.",
)
@click.option(
    "--content-bytes",
    type=click.IntRange(1, 3000),
    default=200,
    show_default=True,
    help="Padding bytes per message after the timing stamp.",
)
@click.option(
    "--targets",
    default="mesh,relay,nats",
    show_default=True,
    help="Comma-separated: mesh, relay (bare Starlette), nats (bare pub-sub).",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Measure the mesh running in this run directory. "
    "Default: start a mesh on free ports in a temporary directory.",
)
@topology_option
@click.option(
    "--rtt-ms",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Round trip in ms added between each leaf and the hub (own mesh only).",
)
@click.option(
    "--drain",
    "drain_s",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds to wait for messages in flight after sending stops.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the report to this JSON file.",
)
def bench(
    clients: int,
    duration_s: float,
    warmup_s: float,
    rate: float,
    window: int,
    group_share: float,
    group_size: int,
    content_bytes: int,
    targets: str,
    run_dir: Path | None,
    topology_file: Path | None,
    rtt_ms: float,
    drain_s: float,
    seed: int,
    json_path: Path | None,
) -> None:
    """Measure throughput and end-to-end latency, with baselines, in one run."""
    import json

    from chatmesh.benchmarks.bench import BenchOptions, format_report, run_bench
    from chatmesh.benchmarks.load import Workload
    from chatmesh.benchmarks.targets import TARGETS

    chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}",
            param_hint="--targets",
        )
    if run_dir is not None and rtt_ms > 0:
        raise click.BadParameter(
            "delay proxies need a mesh the benchmark starts; drop --run-dir",
            param_hint="--rtt-ms",
        )
    workload = Workload(
        duration_s=duration_s,
        warmup_s=warmup_s,
        rate=rate,
        window=window,
        group_share=group_share,
        content_bytes=content_bytes,
        drain_s=drain_s,
        seed=seed,
    )
    options = BenchOptions(
        clients=clients,
        targets=chosen,
        workload=workload,
        group_size=group_size,
        topology=_load(topology_file),
        run_dir=run_dir,
        rtt_ms=rtt_ms,
    )
    try:
        report = asyncio.run(run_bench(options))
    except (ProcessFailed, FileNotFoundError, ConnectionError, ChatmeshError) as exc:
        raise click.ClickException(f"the benchmark failed: {exc}") from exc
    click.echo(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"\nwrote {json_path}")


@click.command()
@click.option(
    "--report",
    "report_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A `chatmesh bench --json` report with a mesh run: the measured costs.",
)
@click.option(
    "--users", type=float, default=1e9, show_default=True, help="Registered users."
)
@click.option(
    "--daily-active",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of users active each day.",
)
@click.option(
    "--online",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="Share of daily active users online at peak.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=0.2,
    show_default=True,
    help="Messages per second per online user.",
)
@click.option(
    "--message-bytes",
    type=click.FloatRange(1),
    default=500,
    show_default=True,
    help="Content bytes per message.",
)
@click.option(
    "--regions",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Regions sharing the load evenly.",
)
@click.option(
    "--connections-per-server",
    type=click.FloatRange(1),
    default=2e6,
    show_default=True,
    help="Connections one edge server holds.",
)
@click.option(
    "--cores-per-server",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="CPU cores per server.",
)
@click.option(
    "--bytes-per-connection",
    type=click.FloatRange(1),
    default=32 * 1024,
    show_default=True,
    help="Memory per idle connection at the edge.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds between a client's pings.",
)
@click.option(
    "--session-minutes",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Mean minutes a user stays online.",
)
@click.option(
    "--store-writes-per-node",
    type=click.FloatRange(1),
    default=50_000,
    show_default=True,
    help="Replica writes/s one store node sustains.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
def capacity(
    report_path: Path,
    users: float,
    daily_active: float,
    online: float,
    rate: float,
    message_bytes: float,
    regions: int,
    connections_per_server: float,
    cores_per_server: int,
    bytes_per_connection: float,
    heartbeat_interval: float,
    session_minutes: float,
    store_writes_per_node: float,
    as_json: bool,
) -> None:
    """Size a deployment from a benchmark report and stated assumptions."""
    import json
    from dataclasses import asdict

    from chatmesh.capacity import (
        Assumptions,
        capacity_model,
        format_rows,
        measured_from_report,
    )

    try:
        measured = measured_from_report(report_path)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(f"cannot use {report_path}: {exc}") from exc
    assumptions = Assumptions(
        users=users,
        daily_active_share=daily_active,
        online_share=online,
        messages_per_online_user_s=rate,
        message_bytes=message_bytes,
        regions=regions,
        connections_per_server=connections_per_server,
        cores_per_server=cores_per_server,
        bytes_per_connection=bytes_per_connection,
        heartbeat_interval_s=heartbeat_interval,
        session_minutes=session_minutes,
        store_writes_per_node_s=store_writes_per_node,
    )
    rows = capacity_model(assumptions, measured)
    if as_json:
        body = {"measured": asdict(measured), "rows": [asdict(r) for r in rows]}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(format_rows(rows, measured))


@click.command("bench-presence")
@click.option(
    "--clients",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Connected clients, spread round-robin over the regions.",
)
@click.option(
    "--ping-interval",
    "ping_interval_s",
    type=click.FloatRange(0.01),
    default=1.0,
    show_default=True,
    help="Seconds between a client's pings.",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(1),
    default=20.0,
    show_default=True,
    help="Seconds of pinging.",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Measure the mesh running in this run directory. Default: start one.",
)
@topology_option
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the report to this JSON file.",
)
def bench_presence(
    clients: int,
    ping_interval_s: float,
    duration_s: float,
    run_dir: Path | None,
    topology_file: Path | None,
    json_path: Path | None,
) -> None:
    """Count hub presence messages per client heartbeat."""
    import json

    from chatmesh.benchmarks.presence import (
        PresenceOptions,
        format_presence,
        run_presence_bench,
    )

    options = PresenceOptions(
        clients=clients,
        ping_interval_s=ping_interval_s,
        duration_s=duration_s,
        topology=_load(topology_file),
        run_dir=run_dir,
    )
    try:
        report = asyncio.run(run_presence_bench(options))
    except (ProcessFailed, FileNotFoundError, ConnectionError) as exc:
        raise click.ClickException(f"the benchmark failed: {exc}") from exc
    click.echo(format_presence(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"\nwrote {json_path}")
