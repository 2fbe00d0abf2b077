"""TLS on client listeners, leaf links and hub routes, with certificates made here."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest

from core.schema import CommittedEvent
from tests.conftest import Clients, small_topology, start_mesh
from topology.certs import write_dev_certificates
from topology.credentials import mesh_users
from topology.launcher import Mesh, nats_server_binary, resolve_ports
from topology.render import hub_client_urls, hub_node_config, leaf_config, write_config


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Three hub nodes, two leaf nodes, every NATS link under mutual TLS."""
    root = tmp_path_factory.mktemp("tls")
    tls = write_dev_certificates(root / "certs")
    topology = small_topology(
        "tls-mesh",
        hub={"nodes": [{"name": f"hub-{i}"} for i in (1, 2, 3)]},
        tls=tls.model_dump() | {"verify_clients": True},
    )
    mesh = start_mesh(topology, root / "run")
    try:
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
async def clients(tls_mesh: Mesh) -> AsyncIterator[Clients]:
    opened = Clients(tls_mesh)
    try:
        yield opened
    finally:
        await opened.close_all()


async def test_message_crosses_regions_over_tls(clients: Clients) -> None:
    alice = await clients.connect("alice", "eu-west")
    bob = await clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    accepted = await alice.send("bob", "over TLS")
    await alice.wait_for(
        lambda e: isinstance(e, CommittedEvent) and e.id == accepted.id
    )
    await bob.wait_for(
        lambda e: (
            getattr(e, "message", None) is not None and e.message.content == "over TLS"
        )
    )


async def test_servers_require_tls_everywhere(tls_mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for node in tls_mesh.topology.hub.nodes:
            base = f"http://{node.host}:{node.monitor_port}"
            varz = (await http.get(f"{base}/varz")).json()
            routes = (await http.get(f"{base}/routez")).json()
            assert varz["tls_required"] is True
            assert varz["tls_verify"] is True
            assert varz["leaf"]["tls_required"] is True
            assert varz["cluster"]["tls_required"] is True
            assert routes["num_routes"] >= 2
        for region in tls_mesh.topology.regions:
            base = f"http://{region.leaf.host}:{region.leaf.monitor_port}"
            leafz = (await http.get(f"{base}/leafz")).json()
            assert leafz["leafnodes"] == 1


async def test_plain_or_unverified_clients_rejected(tls_mesh: Mesh) -> None:
    url = hub_client_urls(tls_mesh.topology)[0].replace("tls://", "nats://")
    password = tls_mesh.ops_auth().password
    plain = {"servers": url, "user": "ops", "password": password}
    # Trusts the CA but shows no client certificate.
    no_cert = ssl.create_default_context(cafile=tls_mesh.topology.tls.ca_file)  # type: ignore[union-attr]
    # Shows the client certificate but does not trust the servers' CA.
    wrong_ca = ssl.create_default_context()
    wrong_ca.load_cert_chain(
        tls_mesh.topology.tls.client_cert_file,  # type: ignore[union-attr]
        tls_mesh.topology.tls.client_key_file,  # type: ignore[union-attr]
    )
    for options in (plain, plain | {"tls": no_cert}, plain | {"tls": wrong_ca}):
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises several kinds
            await nats.connect(
                **options,  # type: ignore[arg-type]
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )


def test_tls_configs_pass_nats_server_check(tmp_path: Path) -> None:
    tls = write_dev_certificates(tmp_path / "certs")
    topology = resolve_ports(
        small_topology(
            "tls-check",
            hub={"nodes": [{"name": f"hub-{i}"} for i in (1, 2, 3)]},
            tls=tls.model_dump(),
        )
    )
    passwords = {user: f"pw-{user}" for user in mesh_users(topology)}
    hub = hub_node_config(topology, topology.hub.nodes[0], tmp_path, passwords)
    leaf = leaf_config(topology, topology.regions[0], tmp_path, passwords)

    assert hub["tls"]["verify"] is False
    assert hub["leafnodes"]["tls"]["verify"] is True
    assert hub["cluster"]["tls"]["verify"] is True
    assert leaf["leafnodes"]["remotes"][0]["tls"]["cert_file"] == tls.client_cert_file
    assert hub_client_urls(topology)[0].startswith("tls://")
    for name, config in (("hub", hub), ("leaf", leaf)):
        path = write_config(config, tmp_path / f"{name}.conf")
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr


def test_dev_certificates_private_keys_owner_only(tmp_path: Path) -> None:
    tls = write_dev_certificates(tmp_path)
    for key_file in (tls.key_file, tls.client_key_file):
        assert Path(key_file).stat().st_mode & 0o777 == 0o600
