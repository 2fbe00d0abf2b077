"""`chatmesh chaos`: inject faults into a running mesh, or run the chaos suite.

Process and link faults act on the mesh that `chatmesh up` runs in
`--run-dir`; `chatmesh up` restarts killed processes. `chaos run` starts a
mesh of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from chatmesh.options import store_option
from chatmesh.paths import DEFAULT_RUN_DIR
from topology.chaos import Chaos, ChaosError, Target
from topology.model import (
    StoreBackend,
    Topology,
    TopologyError,
    default_topology_path,
    load_topology,
)
from topology.processes import process_start_ticks

if TYPE_CHECKING:
    from chatmesh.chaos.scenarios import Scenario

T = TypeVar("T")

THREE_HUB_TOPOLOGY = default_topology_path().parent / "three-hub.yaml"
DEFAULT_SUITE_RUN_DIR = DEFAULT_RUN_DIR / "chaos"

run_dir_option = click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_RUN_DIR,
    show_default=True,
    help="Run directory of the mesh that `chatmesh up` runs.",
)
region_option = click.option(
    "--region", default=None, help="Also target this region's leaf node and edges."
)


@click.group()
def chaos() -> None:
    """Inject faults into a running mesh, or run the chaos suite."""


def _call(action: Callable[[], T]) -> T:
    try:
        return action()
    except ChaosError as exc:
        raise click.ClickException(str(exc)) from exc


def _run(coroutine: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coroutine

    try:
        return asyncio.run(wrapped())
    except ChaosError as exc:
        raise click.ClickException(str(exc)) from exc


def _targets(
    run_dir: Path, names: tuple[str, ...], region: str | None
) -> tuple[Chaos, list[Target]]:
    control = Chaos(run_dir)
    return control, _call(lambda: control.select(names, region))


def _names(targets: list[Target]) -> str:
    return ", ".join(f"{t.name} (pid {t.pid})" for t in targets)


@contextlib.contextmanager
def _until_interrupted(seconds: float) -> Iterator[None]:
    """Sleep `seconds`, ending early on Ctrl-C or SIGTERM, then let cleanup run."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(seconds)
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@chaos.command(name="list")
@run_dir_option
def list_targets(run_dir: Path) -> None:
    """List the mesh's processes and its links to the hub."""
    control = Chaos(run_dir)
    for target in _call(control.targets):
        where = f" in {target.region}" if target.region else ""
        alive = target.pid is not None and (
            process_start_ticks(target.pid) == target.start_ticks
        )
        state = f"pid {target.pid}" if alive else "not running"
        click.echo(f"{target.name:<24} {target.kind}{where}, {state}")
    if _call(control.topology).links.proxy:
        for link in _run(control.links()):
            click.echo(
                f"link {link['region']:<19} {link['mode']}, latency "
                f"{link['latency_ms']} ms, jitter {link['jitter_ms']} ms"
            )


@chaos.command()
@click.argument("names", nargs=-1)
@region_option
@click.option(
    "--down-for",
    "down_for_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds the process stays down before `chatmesh up` restarts it.",
)
@run_dir_option
def kill(
    names: tuple[str, ...], region: str | None, down_for_s: float, run_dir: Path
) -> None:
    """Kill processes with SIGKILL: `kill edge-eu-west-1`, `kill --region eu-west`.

    A store node (`cql-REGION`) restarts on its data and replays its commit log.
    """
    control, targets = _targets(run_dir, names, region)
    _call(lambda: control.kill(targets, down_for_s))
    click.echo(f"killed {_names(targets)}; restart in {down_for_s:g} s")


@chaos.command()
@click.argument("names", nargs=-1)
@region_option
@click.option(
    "--for",
    "for_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Resume after this many seconds (Ctrl-C resumes at once).",
)
@run_dir_option
def pause(
    names: tuple[str, ...], region: str | None, for_s: float | None, run_dir: Path
) -> None:
    """Freeze processes with SIGSTOP until `chaos resume`, or for `--for` seconds."""
    control, targets = _targets(run_dir, names, region)
    _call(lambda: control.pause(targets))
    click.echo(f"paused {_names(targets)}")
    if for_s is not None:
        with _until_interrupted(for_s):
            _call(lambda: control.resume(targets))
            click.echo(f"resumed {_names(targets)}")


@chaos.command()
@click.argument("names", nargs=-1)
@region_option
@run_dir_option
def resume(names: tuple[str, ...], region: str | None, run_dir: Path) -> None:
    """Resume paused processes with SIGCONT."""
    control, targets = _targets(run_dir, names, region)
    _call(lambda: control.resume(targets))
    click.echo(f"resumed {_names(targets)}")


@chaos.command()
@click.argument("region")
@click.option(
    "--mode",
    type=click.Choice(["blackhole", "reset"]),
    default="blackhole",
    show_default=True,
    help="blackhole stalls the link's connections; reset closes them.",
)
@click.option(
    "--for",
    "for_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Heal after this many seconds (Ctrl-C heals at once).",
)
@run_dir_option
def cut(region: str, mode: str, for_s: float | None, run_dir: Path) -> None:
    """Cut REGION's link to the hub until `chaos heal`, or for `--for` seconds."""
    control = Chaos(run_dir)
    _run(control.cut(region, mode))
    click.echo(f"cut {region} from the hub ({mode})")
    if for_s is not None:
        with _until_interrupted(for_s):
            _run(control.heal(region))
            click.echo(f"healed {region}")


@chaos.command()
@click.argument("region", required=False)
@run_dir_option
def heal(region: str | None, run_dir: Path) -> None:
    """Reconnect REGION's cut link to the hub, or restore every link.

    Without REGION, added latency goes too; with it, only the cut ends
    (`chaos latency REGION 0` removes latency).
    """
    control = Chaos(run_dir)
    if region is None:
        _run(control.heal_all())
        click.echo("healed every link and removed added latency")
    else:
        _run(control.heal(region))
        click.echo(f"healed {region}")


@chaos.command()
@click.argument("region")
@click.argument("latency_ms", type=click.FloatRange(min=0))
@click.option(
    "--jitter",
    "jitter_ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Up to this many more milliseconds, drawn at random per chunk of data.",
)
@run_dir_option
def latency(region: str, latency_ms: float, jitter_ms: float, run_dir: Path) -> None:
    """Add LATENCY_MS milliseconds to each direction of REGION's link (0 removes it)."""
    _run(Chaos(run_dir).latency(region, latency_ms, jitter_ms))
    click.echo(f"{region}: {latency_ms:g} ms latency, {jitter_ms:g} ms jitter")


@chaos.command(name="lock-store")
@click.option(
    "--for",
    "for_s",
    type=click.FloatRange(min=0),
    required=True,
    help="Seconds to hold the SQLite store's write lock (Ctrl-C releases it).",
)
@run_dir_option
def lock_store(for_s: float, run_dir: Path) -> None:
    """Make the SQLite store reject writes by holding its write lock."""
    lock = _call(Chaos(run_dir).store_lock)
    _call(lock.acquire)
    click.echo(f"holding the write lock of {lock.path}")
    with _until_interrupted(for_s):
        lock.release()
        click.echo("released the write lock")


@chaos.command(name="run")
@click.argument("scenario_names", nargs=-1)
@click.option("--long", "long_form", is_flag=True, help="Run the long form.")
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=THREE_HUB_TOPOLOGY,
    show_default=True,
    help="Topology of the mesh the suite starts.",
)
@store_option
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_SUITE_RUN_DIR,
    show_default=True,
    help="Run directory of the suite's own mesh.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the report. Default: RUN_DIR/chaos-report-FORM.json.",
)
def run(
    scenario_names: tuple[str, ...],
    long_form: bool,
    topology_file: Path,
    store: StoreBackend | None,
    run_dir: Path,
    json_path: Path | None,
) -> None:
    """Run chaos scenarios under load on a mesh of their own.

    With no SCENARIO_NAMES, runs every scenario that the topology supports.
    """
    from chatmesh.chaos.report import format_table, write_json
    from chatmesh.chaos.runner import run_suite
    from chatmesh.chaos.scenarios import LONG, SHORT

    form = LONG if long_form else SHORT
    try:
        topology = load_topology(topology_file)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    if store is not None:
        topology = topology.with_store_backend(store)
    scenarios = _chosen_scenarios(scenario_names, topology)
    started = time.monotonic()
    reports = _run(run_suite(topology, run_dir, scenarios, form))
    elapsed_s = time.monotonic() - started
    path = json_path or run_dir / f"chaos-report-{form.name}.json"
    write_json(
        reports,
        path,
        form=form.name,
        topology=topology.name,
        store=topology.store.backend,
        elapsed_s=round(elapsed_s, 1),
        load={"clients": form.clients, "interval_s": form.interval_s},
    )
    click.echo(format_table(reports))
    click.echo(f"\n{form.name} form, {elapsed_s:.0f} s; report written to {path}")
    failed = [r for r in reports if not r.passed]
    for report in failed:
        click.echo(f"{report.scenario} FAILED: {'; '.join(report.failures)}", err=True)
    if failed:
        raise SystemExit(1)


def _chosen_scenarios(names: tuple[str, ...], topology: Topology) -> list[Scenario]:
    """Return the scenarios named, or every one that `topology` supports.

    Raises `click.ClickException` for a name that is unknown or that the
    topology cannot run, and prints the reason for each scenario it leaves out.
    """
    from chatmesh.chaos.scenarios import (
        SCENARIOS,
        SCENARIOS_BY_NAME,
        supported_scenarios,
    )

    unknown = [n for n in names if n not in SCENARIOS_BY_NAME]
    if unknown:
        raise click.ClickException(
            f"unknown scenario {', '.join(unknown)}; scenarios: "
            f"{', '.join(SCENARIOS_BY_NAME)}"
        )
    if names:
        chosen = [SCENARIOS_BY_NAME[n] for n in names]
        for scenario in chosen:
            reason = scenario.unsupported_reason(topology)
            if reason is not None:
                raise click.ClickException(
                    f"scenario {scenario.name} cannot run on topology "
                    f"{topology.name}: {reason}"
                )
        return chosen
    chosen = supported_scenarios(topology)
    for scenario in SCENARIOS:
        if scenario not in chosen:
            reason = scenario.unsupported_reason(topology)
            click.echo(f"skipping {scenario.name}: {reason}", err=True)
    return chosen
