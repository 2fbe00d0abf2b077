"""NATS accounts and permissions against real nats-servers of a running mesh.

An edge's credentials must not read another region's deliveries or act as
the core. Every password stays in its 0600 file and out of logs and argv.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, ExternalStream, StreamSource

from core import subjects
from core.natsconn import connect_nats
from core.schema import IngestEnvelope, Origin
from sync.streams import region_deliver_config
from tests.conftest import Clients, small_topology, start_mesh
from topology.credentials import (
    client_auth,
    edge_inbox_prefix,
    edge_user,
    mesh_users,
    read_password,
)
from topology.launcher import Mesh
from topology.render import hub_client_urls, leaf_client_url

SETTLE_S = 1.0


@pytest.fixture(scope="module")
def perm_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A mesh of this module's own: one test rewires a leaf stream."""
    mesh = start_mesh(small_topology("perm-mesh"), tmp_path_factory.mktemp("perm"))
    try:
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
async def clients(perm_mesh: Mesh) -> AsyncIterator[Clients]:
    opened = Clients(perm_mesh)
    try:
        yield opened
    finally:
        await opened.close_all()


class EdgeLogin:
    """A NATS connection with an edge's credentials, and the errors it got."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]


async def login_as_edge(mesh: Mesh, edge: str = "eu-west-1") -> EdgeLogin:
    region = next(r for r in mesh.topology.regions if edge in [e.name for e in r.edges])
    auth = client_auth(
        mesh.topology,
        mesh.layout.nats_secrets,
        edge_user(edge),
        edge_inbox_prefix(edge),
    )
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        leaf_client_url(mesh.topology, region),
        user=auth.user,
        password=auth.password,
        inbox_prefix=auth.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    return EdgeLogin(nc, errors)


async def deliver_to_us_east(clients: Clients, text: str) -> None:
    """Send alice (eu-west) -> bob (us-east) and wait until bob has it."""
    alice = await clients.connect("alice", "eu-west")
    bob = await clients.connect("bob", "us-east")
    await alice.sync()
    await bob.sync()
    await alice.send("bob", text)
    await bob.wait_for(
        lambda e: getattr(e, "message", None) is not None and e.message.content == text
    )


async def test_edge_login_works_for_own_paths(perm_mesh: Mesh) -> None:
    edge = await login_as_edge(perm_mesh)
    try:
        reply = await edge.nc.request(
            subjects.SERVICE_USER_EXISTS, b'{"user": "alice"}', timeout=5
        )
        info = await edge.nc.jetstream(domain="eu-west").stream_info(
            subjects.region_deliver_stream("eu-west")
        )
    finally:
        await edge.nc.close()
    assert b'"exists":true' in reply.data
    assert info.config.name == "DELIVER_eu-west"
    assert edge.violations() == []


async def test_edge_cannot_subscribe_to_other_region(
    perm_mesh: Mesh, clients: Clients
) -> None:
    edge = await login_as_edge(perm_mesh)
    received: list[str] = []

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        received.append(msg.subject)

    snooped = [
        subjects.deliver_subject("us-east"),
        subjects.DELIVER_ALL,
        "_INBOX.>",
        f"{edge_inbox_prefix('us-east-1')}.>",
        "chatmesh.core.>",
        ">",
    ]
    try:
        for subject in snooped:
            await edge.nc.subscribe(subject, cb=on_message)
        await deliver_to_us_east(clients, "not for eu-west's edge")
        await asyncio.sleep(SETTLE_S)
    finally:
        await edge.nc.close()

    assert received == []
    for subject in snooped:
        assert f'subscription to "{subject.lower()}"' in " ".join(edge.violations())


async def test_edge_cannot_consume_other_region_streams(perm_mesh: Mesh) -> None:
    edge = await login_as_edge(perm_mesh)
    attempts = {
        "us-east leaf": (
            edge.nc.jetstream(domain="us-east", timeout=2),
            subjects.region_deliver_stream("us-east"),
        ),
        "hub": (
            edge.nc.jetstream(domain=subjects.HUB_DOMAIN, timeout=2),
            subjects.HUB_DELIVER_STREAM,
        ),
        "own leaf's ingest": (
            edge.nc.jetstream(domain="eu-west", timeout=2),
            subjects.region_ingest_stream("eu-west"),
        ),
    }
    failures: dict[str, Exception] = {}
    try:
        for name, (js, stream) in attempts.items():
            config = ConsumerConfig(filter_subject=subjects.deliver_subject("us-east"))
            if stream.startswith("INGEST"):
                config = ConsumerConfig()
            try:
                await js.add_consumer(stream, config)
            except Exception as exc:
                failures[name] = exc
    finally:
        await edge.nc.close()

    assert set(failures) == set(attempts)
    violations = " ".join(edge.violations())
    assert '"$js.us-east.api.consumer.create.deliver_us-east' in violations
    assert '"$js.hub.api.consumer.create.deliver' in violations
    # On its own domain the leaf checks the subject after mapping it to $JS.API.
    assert '"$js.api.consumer.create.ingest_eu-west' in violations


async def test_edge_cannot_publish_as_core(perm_mesh: Mesh) -> None:
    edge = await login_as_edge(perm_mesh)
    forged = [
        subjects.deliver_subject("eu-west"),
        subjects.deliver_subject("us-east"),
        subjects.PRESENCE_CHANGES,
        subjects.ingest_subject("eu-west", "eu-west-2"),
        subjects.ingest_subject("us-east", "us-east-1"),
        f"{subjects.HUB_JS_API}.STREAM.PURGE.{subjects.HUB_DELIVER_STREAM}",
        f"{subjects.HUB_JS_API}.STREAM.CREATE.FORGED",
        f"$JS.ACK.{subjects.HUB_INGEST_STREAM}.sequencer.1.1.1.1.0",
    ]
    before = await _hub_deliver_last_seq(perm_mesh)
    try:
        for subject in forged:
            await edge.nc.publish(subject, b'{"forged": true}')
        await edge.nc.flush()
        await asyncio.sleep(SETTLE_S)
    finally:
        await edge.nc.close()

    violations = " ".join(edge.violations())
    for subject in forged:
        assert f'publish to "{subject.lower()}"' in violations
    assert await _hub_deliver_last_seq(perm_mesh) == before


async def test_edge_cannot_resource_to_other_region(
    perm_mesh: Mesh, clients: Clients
) -> None:
    """An edge may update its region's stream, but the leaf link stops the rest."""
    edge = await login_as_edge(perm_mesh)
    js = edge.nc.jetstream(domain="eu-west", timeout=5)
    stream = subjects.region_deliver_stream("eu-west")
    base = region_deliver_config("eu-west")
    rewired = [
        StreamSource(
            name=subjects.HUB_DELIVER_STREAM,
            filter_subject=subjects.deliver_subject("us-east"),
            external=ExternalStream(api=subjects.HUB_JS_API),
        ),
        StreamSource(
            name=subjects.region_deliver_stream("us-east"),
            external=ExternalStream(api=subjects.leaf_js_api("us-east")),
        ),
    ]
    try:
        await js.update_stream(base.evolve(sources=rewired))
        before = (await js.stream_info(stream)).state.messages
        await deliver_to_us_east(clients, "must not reach eu-west's stream")
        await asyncio.sleep(SETTLE_S * 2)
        after = (await js.stream_info(stream)).state.messages
    finally:
        await js.update_stream(base)
        await edge.nc.close()
    assert after == before


async def test_wrong_or_missing_password_rejected(perm_mesh: Mesh) -> None:
    region = perm_mesh.topology.get_region("eu-west")
    url = leaf_client_url(perm_mesh.topology, region)
    hub_url = hub_client_urls(perm_mesh.topology)[0]
    attempts = [
        {"servers": url},
        {"servers": url, "user": "edge-eu-west-1", "password": "guess"},
        {"servers": hub_url, "user": "ops", "password": "guess"},
    ]
    for options in attempts:
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(
                **options,  # type: ignore[arg-type]
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )


async def test_system_account_not_bridged(perm_mesh: Mesh) -> None:
    """The ops user in the application account cannot reach `$SYS` requests."""
    mesh = perm_mesh
    hub_url = hub_client_urls(mesh.topology)
    nc = await connect_nats(hub_url, "test-ops", mesh.ops_auth())
    try:
        with pytest.raises(Exception, match=r"(?i)no responders|timeout"):
            await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=1)
    finally:
        await nc.close()
    system = await nats.connect(
        hub_url,
        user="system",
        password=read_password(mesh.layout.nats_secrets, "system"),
    )
    try:
        reply = await system.request("$SYS.REQ.SERVER.PING", b"", timeout=5)
    finally:
        await system.close()
    assert b"hub-1" in reply.data


def test_secrets_stay_in_owner_only_files(perm_mesh: Mesh) -> None:
    layout = perm_mesh.layout
    passwords = [
        read_password(layout.nats_secrets, user)
        for user in mesh_users(perm_mesh.topology)
    ]
    for user in mesh_users(perm_mesh.topology):
        path = layout.nats_secrets / f"{user}.password"
        assert path.stat().st_mode & 0o777 == 0o600, path
    for config in layout.nats.iterdir():
        assert config.stat().st_mode & 0o777 == 0o600, config

    for log_file in layout.logs.iterdir():
        text = log_file.read_text(errors="replace")
        for password in passwords:
            assert password not in text, f"a password appears in {log_file}"
    for proc in perm_mesh.processes.values():
        assert proc.pid is not None
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        env = _environ(proc.pid)
        for password in passwords:
            assert password not in argv, f"a password is on {proc.name}'s command line"
            assert password not in env, f"a password is in {proc.name}'s environment"


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


async def _hub_deliver_last_seq(mesh: Mesh) -> int:
    nc = await connect_nats(hub_client_urls(mesh.topology), "test-ops", mesh.ops_auth())
    try:
        js = nc.jetstream(domain=subjects.HUB_DOMAIN)
        info = await js.stream_info(subjects.HUB_DELIVER_STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def test_core_rejects_envelope_naming_another_edge(perm_mesh: Mesh) -> None:
    """A message whose body claims another edge than its subject is not stored."""
    mesh = perm_mesh
    region = mesh.topology.get_region("eu-west")
    envelope = IngestEnvelope(
        sender="alice",
        recipient="bob",
        client_msg_id="forged-origin",
        content="claims to come from us-east",
        accepted_at_ms=int(time.time() * 1000),
        origin=Origin(region="us-east", edge="us-east-1", connection="c1"),
    )
    nc = await connect_nats(
        [leaf_client_url(mesh.topology, region)], "test-ops", mesh.ops_auth()
    )
    try:
        js = nc.jetstream(domain="eu-west")
        await js.publish(
            subjects.ingest_subject("eu-west", "eu-west-1"),
            envelope.model_dump_json().encode(),
        )
    finally:
        await nc.close()

    core_log = mesh.layout.logs / "core-0.log"
    deadline = time.monotonic() + 10
    while "core.origin_mismatch" not in core_log.read_text():
        assert time.monotonic() < deadline, "the core did not reject the envelope"
        await asyncio.sleep(0.2)
    with sqlite3.connect(mesh.layout.data / "chatmesh.db") as db:
        query = "SELECT count(*) FROM messages WHERE client_msg_id = ?"
        stored = db.execute(query, ("forged-origin",)).fetchone()[0]
    assert stored == 0
