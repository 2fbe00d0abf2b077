"""Run chaos scenarios: load, fault, recovery, checks, and a report for each.

One scenario connects the load's clients in their home regions and sends
for `warmup_s`. Then it injects the fault, lets it last, and sends for
`after_s` more. It stops sending, waits for recipients to catch up, for
presence to converge and for clients to return home, syncs every client
once, and checks. Then the mesh is put back (links healed, processes
resumed and restarted) before the next scenario, which has users of its
own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from chatmesh.chaos import measure
from chatmesh.chaos.load import Load
from chatmesh.chaos.measure import FaultWindow
from chatmesh.chaos.report import ScenarioReport
from chatmesh.chaos.scenarios import FaultContext, Form, Scenario
from topology.chaos import Chaos, ChaosError
from topology.launcher import Mesh
from topology.model import Topology

log = structlog.get_logger(__name__)

HEALTH_POLL_S = 0.25
SYNC_TIMEOUT_S = 30.0
# The wait for presence starts at the fault's end and runs alongside the
# wait for catch-up, so it gets twice the settle timeout.
SETTLE_FACTOR_PRESENCE = 2


async def run_scenario(mesh: Mesh, scenario: Scenario, form: Form) -> ScenarioReport:
    """Run `scenario` on a started `mesh` and return its report.

    The mesh is healthy again when this returns, or it raises `ChaosError`.
    """
    reason = scenario.unsupported_reason(mesh.topology)
    if reason is not None:
        raise ChaosError(
            f"scenario {scenario.name} cannot run on topology "
            f"{mesh.topology.name}: {reason}"
        )
    chaos = Chaos(mesh.layout.root)
    supervisor = asyncio.create_task(mesh.supervise())
    tag = f"{scenario.name}-{secrets.token_hex(2)}"
    load = Load(mesh, tag, form.clients, form.interval_s)
    log.info("chaos.scenario_starting", scenario=scenario.name, form=form.name)
    try:
        await wait_mesh_healthy(mesh, form.settle_timeout_s)
        await load.connect()
        load.begin()
        await asyncio.sleep(form.warmup_s)
        window = await scenario.run_fault(FaultContext(mesh, chaos, form))
        log.info("chaos.fault_ended", scenario=scenario.name, fault=window.description)
        report = await _settle_and_check(scenario, form, load, window)
    finally:
        await load.close()
        await restore(mesh, chaos, form.settle_timeout_s)
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    log.info(
        "chaos.scenario_done",
        scenario=scenario.name,
        passed=report.passed,
        failures=report.failures,
    )
    return report


async def _settle_and_check(
    scenario: Scenario, form: Form, load: Load, window: FaultWindow
) -> ScenarioReport:
    presence = asyncio.create_task(
        measure.wait_presence_converged(
            load, window.ended_at, form.settle_timeout_s * SETTLE_FACTOR_PRESENCE
        )
    )
    await asyncio.sleep(form.after_s)
    await load.stop(form.settle_timeout_s)
    catch_up_s = await measure.wait_caught_up(load, window, form.settle_timeout_s)
    late = await measure.count_late(load, form.settle_timeout_s)
    presence_s = await presence
    away = await measure.wait_back_home(load, form.settle_timeout_s)
    await load.sync_all(SYNC_TIMEOUT_S)
    report = assess(scenario, form, load, window, catch_up_s, presence_s)
    report.late = late
    report.not_back_home = away
    return report


def assess(
    scenario: Scenario,
    form: Form,
    load: Load,
    window: FaultWindow,
    catch_up_s: float | None,
    presence_s: float | None,
) -> ScenarioReport:
    """Check a finished run and collect its figures."""
    lost = measure.find_lost(load)
    ordering = measure.check_order(load)
    resumes = measure.resumes(load, window)
    latencies = measure.delivery_latencies(load)
    acknowledged = measure.acknowledged(load)
    return ScenarioReport(
        scenario=scenario.name,
        form=form.name,
        fault=window.description,
        fault_s=round(window.ended_at - window.started_at, 2),
        clients=len(load.users),
        sent=len(load.ledger),
        acknowledged=len(acknowledged),
        unacknowledged=len(load.ledger) - len(acknowledged),
        lost=len(lost),
        duplicates=measure.count_duplicates(load),
        order_violations=ordering.total,
        regressions=ordering.regressions,
        conflicts=ordering.conflicts,
        sender_inversions=ordering.sender_inversions,
        sessions_lost=resumes.sessions_lost,
        moved_region=resumes.moved_region,
        not_resumed=resumes.not_resumed,
        resume_p50_s=measure.percentile(resumes.resume_s, 0.5),
        resume_p99_s=measure.percentile(resumes.resume_s, 0.99),
        back_home_p50_s=measure.percentile(resumes.back_home_s, 0.5),
        back_home_p99_s=measure.percentile(resumes.back_home_s, 0.99),
        catch_up_s=catch_up_s,
        presence_convergence_s=presence_s,
        delivery_p50_s=measure.percentile(latencies, 0.5),
        delivery_p99_s=measure.percentile(latencies, 0.99),
        lost_ids=[f"{m.sender}:{m.client_msg_id}" for m in lost],
    )


async def restore(mesh: Mesh, chaos: Chaos, timeout_s: float) -> None:
    """Heal every link, resume paused processes, end holds, wait until healthy."""
    if mesh.topology.links.proxy:
        await chaos.heal_all()
    targets = chaos.targets()
    for target in targets:
        with contextlib.suppress(ChaosError):
            chaos.resume([target])
    chaos.release([t.name for t in targets])
    await wait_mesh_healthy(mesh, timeout_s)


async def wait_mesh_healthy(mesh: Mesh, timeout_s: float) -> None:
    """Wait until every process of the mesh, store nodes too, passes its check."""
    deadline = time.monotonic() + timeout_s
    while True:
        processes = mesh.supervised()
        checks = await asyncio.gather(
            *(proc.check_health() for proc in processes.values())
        )
        unhealthy = [name for name, ok in zip(processes, checks, strict=True) if not ok]
        if not unhealthy:
            return
        if time.monotonic() > deadline:
            raise ChaosError(
                f"the mesh did not recover within {timeout_s:.0f} s; unhealthy: "
                f"{', '.join(unhealthy)}; see their logs: "
                + ", ".join(str(processes[name].log_path) for name in unhealthy)
            )
        await asyncio.sleep(HEALTH_POLL_S)


async def run_suite(
    topology: Topology, run_dir: Path, scenarios: Sequence[Scenario], form: Form
) -> list[ScenarioReport]:
    """Start a mesh in `run_dir`, run `scenarios` on it in order, stop it."""
    mesh = Mesh(topology, run_dir)
    reports = []
    try:
        await mesh.start()
        for scenario in scenarios:
            reports.append(await run_scenario(mesh, scenario, form))
    finally:
        mesh.stop()
    return reports
