"""Tests of the local Cassandra nodes that stand in for ScyllaDB."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from cassandra import ConsistencyLevel, Unavailable, WriteTimeout
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, FallthroughRetryPolicy

from tests.cql_fixtures import RunningCqlCluster, RunningCqlNode
from topology.cql_server import (
    CASSANDRA_VERSION,
    POM_PATH,
    UNSAFE_SYSTEM_FLAG,
    CqlNodeSpec,
    cassandra_config,
    jvm_command,
)

KEYSPACE = "chat_two_dc"
EACH_QUORUM_PROFILE = "each_quorum"
# A LOCAL_QUORUM write returns before the remote datacenter applies it, so a
# read in the other datacenter polls for up to this long.
REPLICATION_WAIT_S = 15.0


@contextmanager
def dc_session(cluster: RunningCqlCluster, datacenter: str) -> Iterator[Any]:
    """Open a driver session that sends requests only to `datacenter`."""
    contact_point = cluster.node_in(datacenter).contact_point
    with connect(contact_point, cluster.port, datacenter) as session:
        yield session


@contextmanager
def connect(contact_point: str, port: int, datacenter: str) -> Iterator[Any]:
    local_only = DCAwareRoundRobinPolicy(local_dc=datacenter)
    profiles = {
        EXEC_PROFILE_DEFAULT: ExecutionProfile(
            load_balancing_policy=local_only,
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            request_timeout=30,
        ),
        EACH_QUORUM_PROFILE: ExecutionProfile(
            load_balancing_policy=local_only,
            consistency_level=ConsistencyLevel.EACH_QUORUM,
            retry_policy=FallthroughRetryPolicy(),
            request_timeout=30,
        ),
    }
    driver = Cluster(
        [contact_point],
        port=port,
        protocol_version=4,
        execution_profiles=profiles,
    )
    try:
        yield driver.connect()
    finally:
        driver.shutdown()


def read_body(session: Any, conversation: str, seq: int) -> str | None:
    row = session.execute(
        f"SELECT body FROM {KEYSPACE}.messages WHERE conversation = %s AND seq = %s",
        (conversation, seq),
    ).one()
    return None if row is None else str(row.body)


def wait_for_body(session: Any, conversation: str, seq: int) -> str | None:
    deadline = time.monotonic() + REPLICATION_WAIT_S
    body = read_body(session, conversation, seq)
    while body is None and time.monotonic() < deadline:
        time.sleep(0.2)
        body = read_body(session, conversation, seq)
    return body


def write_body(session: Any, conversation: str, seq: int, body: str) -> None:
    session.execute(
        f"INSERT INTO {KEYSPACE}.messages (conversation, seq, body) "
        "VALUES (%s, %s, %s)",
        (conversation, seq, body),
    )


def create_schema(session: Any) -> None:
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
        "{'class': 'NetworkTopologyStrategy', 'eu-west': 1, 'us-east': 1}"
    )
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.messages ("
        "conversation text, seq int, body text, PRIMARY KEY (conversation, seq))"
    )


def test_pom_pins_cassandra_version() -> None:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    pinned = ElementTree.parse(POM_PATH).find(
        "m:properties/m:cassandra.version", namespace
    )

    assert pinned is not None
    assert pinned.text == CASSANDRA_VERSION


def test_config_and_command_of_spec(tmp_path: Path) -> None:
    spec = CqlNodeSpec(
        name="unit",
        address="127.0.0.2",
        native_port=19042,
        storage_port=17000,
        datacenter="us-east",
        token=42,
        work_dir=tmp_path,
        seeds=("127.0.0.1:17000",),
        heap_mb=512,
    )
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "jamm-0.4.0.jar").touch()
    config = cassandra_config(spec)
    lib_dir = tmp_path / "lib"
    command = jvm_command(spec, Path("/usr/bin/java"), lib_dir)

    assert config["listen_address"] == "127.0.0.2"
    assert config["native_transport_port"] == 19042
    assert config["initial_token"] == "42"
    assert config["seed_provider"] == [
        {
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": "127.0.0.1:17000"}],
        }
    ]
    assert "-Xmx512m" in command
    assert f"-javaagent:{tmp_path / 'lib' / 'jamm-0.4.0.jar'}" in command
    assert command[-1] == "org.apache.cassandra.service.CassandraDaemon"
    assert UNSAFE_SYSTEM_FLAG not in command
    unsafe = replace(spec, unsafe_system=True)
    assert UNSAFE_SYSTEM_FLAG in jvm_command(unsafe, Path("/usr/bin/java"), lib_dir)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("native_port", 0),
        ("storage_port", 70000),
        ("storage_port", 19042),
        ("token", 2**63),
        ("heap_mb", 128),
    ],
)
def test_spec_rejects_invalid_value(tmp_path: Path, field: str, value: object) -> None:
    valid: dict[str, Any] = {
        "name": "unit",
        "address": "127.0.0.1",
        "native_port": 19042,
        "storage_port": 17000,
        "datacenter": "eu-west",
        "token": 0,
        "work_dir": tmp_path,
    }

    with pytest.raises(ValueError):
        CqlNodeSpec(**{**valid, field: value})


@pytest.mark.cassandra
def test_single_node_release_version(cql_node: RunningCqlNode) -> None:
    with connect(cql_node.contact_point, cql_node.port, "eu-west") as session:
        local = session.execute(
            "SELECT release_version, data_center FROM system.local"
        ).one()

    assert local.release_version.startswith("5.0."), local.release_version
    assert local.data_center == "eu-west"


@pytest.mark.cassandra
def test_dc_sessions_stay_local(cql_cluster_two_dc: RunningCqlCluster) -> None:
    for datacenter in ("eu-west", "us-east"):
        with dc_session(cql_cluster_two_dc, datacenter) as session:
            for _ in range(4):
                local = session.execute("SELECT data_center FROM system.local").one()
                assert local.data_center == datacenter


@pytest.mark.cassandra
def test_write_eu_west_read_us_east(cql_cluster_two_dc: RunningCqlCluster) -> None:
    with (
        dc_session(cql_cluster_two_dc, "eu-west") as eu_west,
        dc_session(cql_cluster_two_dc, "us-east") as us_east,
    ):
        create_schema(eu_west)
        write_body(eu_west, "room-1", 1, "hello from eu-west")

        assert read_body(eu_west, "room-1", 1) == "hello from eu-west"
        assert wait_for_body(us_east, "room-1", 1) == "hello from eu-west"


@pytest.mark.cassandra
def test_local_quorum_with_us_east_paused(
    cql_cluster_two_dc: RunningCqlCluster,
) -> None:
    us_node = cql_cluster_two_dc.node_in("us-east").node
    with dc_session(cql_cluster_two_dc, "eu-west") as eu_west:
        create_schema(eu_west)
        us_node.pause()
        try:
            write_body(eu_west, "room-2", 1, "written while us-east is paused")
            body = read_body(eu_west, "room-2", 1)
            assert body == "written while us-east is paused"
            # WriteTimeout while eu-west still believes us-east is alive,
            # Unavailable once its failure detector has marked it down.
            with pytest.raises((WriteTimeout, Unavailable)):
                eu_west.execute(
                    f"INSERT INTO {KEYSPACE}.messages (conversation, seq, body) "
                    "VALUES ('room-2', 2, 'needs both datacenters')",
                    execution_profile=EACH_QUORUM_PROFILE,
                )
        finally:
            us_node.resume()
