"""Numbered CQL schema migrations for the ScyllaDB backend.

Each migration is a list of DDL statements that are all safe to run again
(`IF NOT EXISTS`), so a migration that stopped half-way is completed by the
next run. A row in `schema_migrations` records each finished migration.
Migrations only ever add: a released migration is never edited, a change
is a new migration with the next number.

The schema avoids user-defined types, materialized views, secondary indexes
and counters, so it runs unchanged on ScyllaDB and on Apache Cassandra 5.0.
The only lightweight transaction is `create_group`'s INSERT ... IF NOT EXISTS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import structlog

from topology.model import Region
from topology.model import ScyllaStore as ScyllaSettings

log = structlog.get_logger(__name__)

# Client message ids stay in `client_ids` for 30 days. A replay of an older
# message, from a JetStream redelivery or a client retrying a send, is no
# longer recognised and would be stored again under a new sequence. So this
# must stay far above the JetStream duplicate window and redelivery horizon.
CLIENT_ID_TTL_S: Final = 30 * 24 * 3600

# Unquoted CQL identifiers. ScyllaDB and Cassandra cap keyspace and table names
# at 48 characters.
KEYSPACE_PATTERN: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
DATACENTER_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Migration:
    """One schema step. `{keyspace}` in a statement is replaced on apply.

    The replacement is plain text substitution, not `str.format`, so CQL map
    literals need no escaped braces.
    """

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        version=1,
        name="create message tables",
        statements=(
            # One partition per user, for register_user and user_exists.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.users (
                user_id text PRIMARY KEY
            )
            """,
            # Presence updates often, so it has its own table and users stays
            # a pure existence check.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.user_last_seen (
                user_id text PRIMARY KEY,
                last_seen_ms bigint
            )
            """,
            # A conversation's messages in partitions of `bucket_size` sequences,
            # where bucket = seq // bucket_size, so no partition grows without
            # bound and "after seq S" or "latest N" reads one or two partitions.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.messages (
                conversation text,
                bucket bigint,
                seq bigint,
                message_id bigint,
                sender text,
                recipient text,
                content text,
                timestamp_ms bigint,
                client_msg_id text,
                kind text,
                target text,
                PRIMARY KEY ((conversation, bucket), seq)
            ) WITH CLUSTERING ORDER BY (seq ASC)
            """,
            # The idempotency key of a send: one tiny partition per
            # (sender, client message id), written once and expired by TTL,
            # which is the workload time-window compaction is made for.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.client_ids (
                sender text,
                client_msg_id text,
                conversation text,
                seq bigint,
                PRIMARY KEY ((sender, client_msg_id))
            ) WITH default_time_to_live = """
            + str(CLIENT_ID_TTL_S)
            + """
              AND compaction = {
                'class': 'TimeWindowCompactionStrategy',
                'compaction_window_unit': 'DAYS',
                'compaction_window_size': 1
              }
            """,
            # The highest stored sequence of each conversation.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.conversations (
                conversation text PRIMARY KEY,
                last_seq bigint
            )
            """,
            # Each user's conversations with the range of sequences the user
            # may read, and the last sequence of 1-1 conversations: a whole
            # offline inbox ("what changed since my cursors") in one partition.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.user_conversations (
                user_id text,
                conversation text,
                last_seq bigint,
                from_seq bigint,
                until_seq bigint,
                PRIMARY KEY (user_id, conversation)
            )
            """,
            # Settings fixed for the keyspace's lifetime, such as bucket_size.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.store_settings (
                name text PRIMARY KEY,
                value bigint
            )
            """,
        ),
    ),
    Migration(
        version=2,
        name="create group tables",
        statements=(
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.groups (
                group_id text PRIMARY KEY,
                name text,
                owner text,
                created_ms bigint
            )
            """,
            # A group's members in one partition, for fetch_members.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.group_members (
                group_id text,
                user_id text,
                role text,
                PRIMARY KEY (group_id, user_id)
            )
            """,
            # The same rows keyed by user, for fetch_groups_of, in place of a
            # secondary index.
            """
            CREATE TABLE IF NOT EXISTS {keyspace}.user_groups (
                user_id text,
                group_id text,
                role text,
                PRIMARY KEY (user_id, group_id)
            )
            """,
        ),
    ),
)

SCHEMA_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (
    version int PRIMARY KEY,
    name text,
    applied_at timestamp
)
"""


class CqlExecutor(Protocol):
    """The connected CQL session that the migration runner uses."""

    async def execute_cql(
        self, operation: str, query: str, params: Sequence[object] = ()
    ) -> list[dict[str, Any]]:
        """Run one unprepared statement and return all its rows."""
        ...

    def keyspace_exists(self, keyspace: str) -> bool:
        """Return whether the driver's schema metadata contains `keyspace`."""
        ...


def validate_keyspace(keyspace: str) -> None:
    """Raise `ValueError` unless `keyspace` is a valid unquoted CQL name."""
    if not KEYSPACE_PATTERN.fullmatch(keyspace):
        raise ValueError(
            f"invalid keyspace name {keyspace!r}: use 1 to 48 letters, digits and "
            "underscores, starting with a letter (hyphens are not allowed in CQL)"
        )


def validate_replication(replication: Mapping[str, int]) -> None:
    """Raise `ValueError` unless every datacenter name and factor is usable."""
    if not replication:
        raise ValueError("replication is empty: name at least one datacenter")
    for datacenter, factor in replication.items():
        if not DATACENTER_PATTERN.fullmatch(datacenter):
            raise ValueError(
                f"invalid datacenter name {datacenter!r}: use letters, digits, "
                "'_', '.' and '-'"
            )
        if not 1 <= factor <= 9:
            raise ValueError(
                f"replication factor {factor} of datacenter {datacenter!r} is "
                "outside 1..9"
            )


def replication_from_regions(regions: Sequence[Region]) -> dict[str, int]:
    """Map each region (one datacenter each) to its store replication factor."""
    return {region.name: region.store_replication_factor for region in regions}


def create_keyspace_cql(keyspace: str, replication: Mapping[str, int]) -> str:
    """Build the CREATE KEYSPACE statement with one entry per datacenter."""
    validate_keyspace(keyspace)
    validate_replication(replication)
    return (
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{_replication_cql(replication)} AND durable_writes = true"
    )


def _replication_cql(replication: Mapping[str, int]) -> str:
    factors = ", ".join(f"'{dc}': {rf}" for dc, rf in sorted(replication.items()))
    return f"{{'class': 'NetworkTopologyStrategy', {factors}}}"


async def apply_migrations(
    session: CqlExecutor, keyspace: str, replication: Mapping[str, int]
) -> list[Migration]:
    """Create the keyspace if missing and apply every pending migration.

    Returns the migrations applied by this call, in order. An empty list
    means the schema was already current. Running it again is safe.

    NOTE: run migrations from one process at a time (the `store migrate`
    command, or the first process of a deploy). Concurrent CREATE TABLE
    statements on different coordinators can leave a Cassandra cluster with
    conflicting table ids.
    """
    create_keyspace = create_keyspace_cql(keyspace, replication)
    if not session.keyspace_exists(keyspace):
        await session.execute_cql("create keyspace", create_keyspace)
        log.info("store.keyspace_created", keyspace=keyspace, replication=replication)
    await _check_replication(session, keyspace, replication)
    await session.execute_cql(
        "create schema_migrations", _render(SCHEMA_MIGRATIONS_TABLE, keyspace)
    )
    done = await _applied_versions(session, keyspace)
    applied: list[Migration] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        await _apply_one(session, keyspace, migration)
        applied.append(migration)
    log.info(
        "store.schema_ready",
        keyspace=keyspace,
        version=MIGRATIONS[-1].version,
        applied=[m.version for m in applied],
    )
    return applied


def _render(statement: str, keyspace: str) -> str:
    return statement.replace("{keyspace}", keyspace)


async def _applied_versions(session: CqlExecutor, keyspace: str) -> set[int]:
    rows = await session.execute_cql(
        "read schema_migrations", f"SELECT version FROM {keyspace}.schema_migrations"
    )
    return {int(row["version"]) for row in rows}


async def _apply_one(session: CqlExecutor, keyspace: str, migration: Migration) -> None:
    log.info("store.migration_applying", version=migration.version, name=migration.name)
    for statement in migration.statements:
        await session.execute_cql(
            f"migration {migration.version}", _render(statement, keyspace)
        )
    await session.execute_cql(
        f"record migration {migration.version}",
        f"INSERT INTO {keyspace}.schema_migrations (version, name, applied_at) "
        "VALUES (%s, %s, %s)",
        (migration.version, migration.name, datetime.now(UTC)),
    )
    log.info("store.migration_applied", version=migration.version, name=migration.name)


async def _check_replication(
    session: CqlExecutor, keyspace: str, replication: Mapping[str, int]
) -> None:
    """Log a warning when the keyspace's replication differs from `replication`.

    The keyspace is left as it is, because a changed replication factor needs
    a full repair afterwards, which is an operator's decision.
    """
    rows = await session.execute_cql(
        "read keyspace replication",
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (keyspace,),
    )
    if not rows:
        return
    current = {
        key: int(value)
        for key, value in dict(rows[0]["replication"]).items()
        if key != "class"
    }
    if current != dict(replication):
        log.warning(
            "store.replication_mismatch",
            keyspace=keyspace,
            current=current,
            expected=dict(replication),
            fix=f"ALTER KEYSPACE {keyspace} WITH replication = "
            f"{_replication_cql(replication)}, then run a full repair",
        )


async def migrate(
    settings: ScyllaSettings,
    regions: Sequence[Region],
    local_region: str,
    *,
    request_timeout_s: float = 5.0,
) -> list[Migration]:
    """Connect to the cluster of `settings` and apply pending migrations.

    The keyspace replicates to one datacenter per region, named like the
    region, with the region's `store_replication_factor`. `local_region` is
    the datacenter that this process talks to. Returns the migrations applied
    now. Raises `core.errors.StoreError` when the cluster cannot be reached.
    """
    from core.store.scylla import ScyllaStore

    store = ScyllaStore(
        contact_points=list(settings.contact_points),
        port=settings.port,
        keyspace=settings.keyspace,
        local_datacenter=local_region,
        replication=replication_from_regions(regions),
        request_timeout_s=request_timeout_s,
    )
    try:
        return await store.migrate()
    finally:
        await store.close()
