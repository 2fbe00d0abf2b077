"""Fault injection against a running mesh: kill, pause, cut, slow, lock.

`Chaos` works from a mesh's run directory, so the `chatmesh chaos` commands
in another process and the chaos suite in the launcher's process use it
alike.

- Process faults signal the pids that the launcher records in
  `processes.json`, after checking each pid's start time, so a pid that the
  kernel gave to another process is never signalled. The local Cassandra
  nodes of a mesh with `store.scylla.local_nodes` are among them, with kind
  `store`.
- A kill may hold the process down for a while: the launcher's supervisor
  (`chatmesh up`) restarts it once the hold ends. A store node restarts on
  its data directory and replays its commit log.
- Link faults go to the control API of the link proxy, which runs when the
  topology sets `links.proxy`.
- `StoreWriteLock` makes the SQLite store reject writes by holding its
  write lock, as a stalled disk or a long maintenance job would.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import structlog

from core.errors import ChatmeshError
from topology.launcher import RunLayout
from topology.model import Topology
from topology.processes import process_start_ticks

log = structlog.get_logger(__name__)

CONTROL_TIMEOUT_S = 5.0
# The kinds of process that `select(region=...)` picks: a region's NATS leaf
# node and edges. Store nodes are picked only by name.
REGION_KINDS = ("leaf", "edge")
# How long taking the store's write lock may wait for a write in progress.
LOCK_TIMEOUT_S = 10.0


class ChaosError(ChatmeshError):
    """A fault could not be injected or removed."""


@dataclass(frozen=True)
class Target:
    """A process of the mesh that faults can be aimed at."""

    name: str
    kind: str
    region: str | None
    pid: int | None
    start_ticks: int | None


class Chaos:
    """Faults against the mesh whose run directory is `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.layout = RunLayout(run_dir.resolve())

    def topology(self) -> Topology:
        try:
            return Topology.model_validate_json(self.layout.topology.read_text())
        except OSError as exc:
            raise ChaosError(
                f"no mesh found in {self.layout.root}: {exc.strerror}; start one "
                "with `chatmesh up` or pass --run-dir"
            ) from exc

    def targets(self) -> list[Target]:
        """Return every process of the mesh, as last recorded by the launcher."""
        try:
            data = json.loads(self.layout.processes.read_text())
        except OSError as exc:
            raise ChaosError(
                f"no process list in {self.layout.root}: {exc.strerror}; start the "
                "mesh with `chatmesh up` or pass --run-dir"
            ) from exc
        return [
            Target(
                name=name,
                kind=entry["kind"],
                region=entry["region"],
                pid=entry["pid"],
                start_ticks=entry["start_ticks"],
            )
            for name, entry in data["processes"].items()
        ]

    def select(
        self, names: Sequence[str] = (), region: str | None = None
    ) -> list[Target]:
        """Return the processes named, plus the leaf and edges of `region`.

        Raises `ChaosError` naming the known processes when a name is unknown.
        A region's store node is not included unless it is named.
        """
        targets = self.targets()
        by_name = {t.name: t for t in targets}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ChaosError(
                f"unknown process {', '.join(unknown)}; this mesh runs: "
                f"{', '.join(by_name)}"
            )
        chosen = [by_name[n] for n in names]
        if region is not None:
            regions = {t.region for t in targets if t.region}
            if region not in regions:
                raise ChaosError(
                    f"unknown region {region!r}; this mesh has: "
                    f"{', '.join(sorted(regions))}"
                )
            in_region = [
                t for t in targets if t.region == region and t.kind in REGION_KINDS
            ]
            chosen += [t for t in in_region if t not in chosen]
        if not chosen:
            raise ChaosError("name at least one process, or a region")
        return chosen

    def store_node(self, region: str | None = None) -> Target:
        """Return the store node of `region`, by default the core's store region.

        Raises `ChaosError` when the launcher runs no store node there, as
        with a SQLite store or a Cassandra cluster that the mesh only
        connects to.
        """
        topology = self.topology()
        region = region or topology.core_store_region
        for target in self.targets():
            if target.kind == "store" and target.region == region:
                return target
        raise ChaosError(
            f"this mesh runs no store node in region {region!r}; store nodes run "
            f"only with store.backend scylla and store.scylla.local_nodes (the "
            f"store backend is {topology.store.backend}), as `chatmesh up --store "
            "scylla` sets"
        )

    # ---- processes -----------------------------------------------------------

    def kill(self, targets: Sequence[Target], down_for_s: float = 0.0) -> None:
        """Kill each target with SIGKILL; the supervisor restarts it after `down_for_s`.

        With `down_for_s` 0 the supervisor restarts it at once.
        """
        until = time.time() + down_for_s
        for target in targets:
            if down_for_s > 0:
                self.layout.holds.mkdir(parents=True, exist_ok=True)
                (self.layout.holds / target.name).write_text(f"{until:.3f}")
            self._signal(target, signal.SIGKILL)
        log.info(
            "chaos.killed",
            processes=[t.name for t in targets],
            down_for_s=down_for_s,
        )

    def release(self, names: Sequence[str]) -> None:
        """End the holds on `names`, so the supervisor restarts them now."""
        for name in names:
            (self.layout.holds / name).unlink(missing_ok=True)
        log.info("chaos.released", processes=list(names))

    def pause(self, targets: Sequence[Target]) -> None:
        """Freeze each target with SIGSTOP: it keeps its sockets but does nothing."""
        for target in targets:
            self._signal(target, signal.SIGSTOP)
        log.info("chaos.paused", processes=[t.name for t in targets])

    def resume(self, targets: Sequence[Target]) -> None:
        for target in targets:
            self._signal(target, signal.SIGCONT)
        log.info("chaos.resumed", processes=[t.name for t in targets])

    def _signal(self, target: Target, sig: signal.Signals) -> None:
        alive = target.pid is not None and (
            process_start_ticks(target.pid) == target.start_ticks
        )
        if not alive or target.pid is None:
            raise ChaosError(
                f"process {target.name} is not running (recorded pid "
                f"{target.pid}); wait for the supervisor to restart it"
            )
        os.kill(target.pid, sig)

    # ---- links ---------------------------------------------------------------

    async def links(self) -> list[dict[str, Any]]:
        """Return the state of every region's link to the hub."""
        body = await self._control("GET", "/links")
        links: list[dict[str, Any]] = body["links"]
        return links

    async def cut(self, region: str, mode: str = "blackhole") -> dict[str, Any]:
        """Cut `region` off from the hub; `mode` is blackhole or reset."""
        return await self._control("POST", f"/links/{region}/cut", {"mode": mode})

    async def heal(self, region: str) -> dict[str, Any]:
        return await self._control("POST", f"/links/{region}/heal")

    async def heal_all(self) -> None:
        """Reconnect every cut link and remove every added latency."""
        for link in await self.links():
            if link["mode"] != "up":
                await self.heal(link["region"])
            if link["latency_ms"] or link.get("jitter_ms"):
                await self.latency(link["region"], 0.0)

    async def latency(
        self, region: str, latency_ms: float, jitter_ms: float = 0.0
    ) -> dict[str, Any]:
        """Add `latency_ms` (plus up to `jitter_ms`) to each direction of a link."""
        params = {"ms": str(latency_ms), "jitter_ms": str(jitter_ms)}
        return await self._control("POST", f"/links/{region}/latency", params)

    async def _control(
        self, method: str, path: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        links = self.topology().links
        if not links.proxy:
            raise ChaosError(
                "this mesh has no link proxy; start it from a topology with "
                "`links: {proxy: true}`, such as topology/topologies/three-hub.yaml"
            )
        url = f"http://{links.host}:{links.control_port}{path}"
        try:
            async with httpx.AsyncClient(timeout=CONTROL_TIMEOUT_S) as client:
                response = await client.request(method, url, params=params)
        except httpx.HTTPError as exc:
            raise ChaosError(
                f"the link proxy at {url} did not respond ({exc!r}); is the "
                "`links` process running?"
            ) from exc
        body: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise ChaosError(f"the link proxy rejected {method} {path}: {body}")
        return body

    # ---- store ---------------------------------------------------------------

    def store_lock(self) -> StoreWriteLock:
        """Return a lock that blocks the SQLite store's writes while held."""
        store = self.topology().store
        if store.backend != "sqlite":
            raise ChaosError(
                f"the store backend is {store.backend}; the write lock works on "
                "SQLite only; with local Cassandra nodes (store.scylla."
                "local_nodes), pause a store node instead (`chatmesh chaos list` "
                "names them)"
            )
        return StoreWriteLock(self.layout.data / store.sqlite_path)


class StoreWriteLock:
    """The SQLite store's write lock, held by a connection of its own.

    While it is held, each write of the core waits out SQLite's busy timeout
    (5 s in Python's sqlite3 module) and fails with "database is locked", and
    the sequencer retries it. Reads still work, because the store runs in WAL
    mode, where readers do not wait for writers.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def acquire(self) -> None:
        if not self.path.exists():
            raise ChaosError(f"SQLite store {self.path} not found; is the mesh up?")
        db = sqlite3.connect(
            self.path,
            timeout=LOCK_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            db.close()
            raise ChaosError(f"cannot lock SQLite store {self.path}: {exc}") from exc
        self._db = db
        log.info("chaos.store_locked", path=str(self.path))

    def release(self) -> None:
        if self._db is None:
            return
        self._db.execute("ROLLBACK")
        self._db.close()
        self._db = None
        log.info("chaos.store_unlocked", path=str(self.path))

    def __enter__(self) -> StoreWriteLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
