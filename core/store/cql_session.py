"""A CQL driver session used from asyncio, with retries and logging.

The driver runs its own I/O thread. Requests use `Session.execute_async`, and
the driver's callbacks resolve an asyncio future through
`loop.call_soon_threadsafe`, so no coroutine blocks the event loop. Only the
blocking steps without an async form (connect, prepare, shutdown) run in a
worker thread through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from cassandra import ConsistencyLevel, DriverException, OperationTimedOut, Timeout
from cassandra import Unavailable as CqlUnavailable
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    FallthroughRetryPolicy,
    TokenAwarePolicy,
)
from cassandra.query import SimpleStatement, dict_factory

from core.errors import StoreError

log = structlog.get_logger(__name__)

# ScyllaDB speaks native protocol v4. Pinning it skips the driver's version
# negotiation and keeps Cassandra 5.0 in tests on the same protocol.
PROTOCOL_VERSION: Final = 4

# Errors after which the same idempotent request may succeed: coordinator or
# client timeouts, too few live replicas, and lost connections.
RETRYABLE_ERRORS: Final = (
    OperationTimedOut,
    Timeout,
    CqlUnavailable,
    NoHostAvailable,
    ConnectionException,
)


@dataclass(frozen=True)
class RetrySettings:
    """Attempt limit and backoff for requests that failed with a retryable error."""

    max_attempts: int = 4
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts is {self.max_attempts}; it must be >= 1")

    def delay_s(self, attempt: int) -> float:
        """Return the pause after failed attempt `attempt` (1-based).

        The cap doubles per attempt up to `max_delay_s`, and the pause is
        drawn from the upper half of it so that clients spread out.
        """
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)


@dataclass(frozen=True)
class Page:
    """One page of result rows, and the state to fetch the next one."""

    rows: list[dict[str, Any]]
    paging_state: bytes | None


class CqlSession:
    """A lazily connected driver session that sends requests to one datacenter.

    Load balancing is token-aware over a DC-aware round robin with
    `local_datacenter`, and never uses hosts of other datacenters. Rows come
    back as dicts. Every statement run here must be idempotent, because
    retryable errors are retried.
    """

    def __init__(
        self,
        contact_points: list[str],
        port: int,
        local_datacenter: str,
        request_timeout_s: float,
        retry: RetrySettings,
        default_consistency: int = ConsistencyLevel.LOCAL_QUORUM,
    ) -> None:
        if not contact_points:
            raise ValueError("contact_points is empty: name at least one node")
        if request_timeout_s <= 0:
            raise ValueError(
                f"request_timeout_s is {request_timeout_s}; it must be > 0"
            )
        self._contact_points = list(contact_points)
        self._port = port
        self._local_datacenter = local_datacenter
        self._timeout_s = request_timeout_s
        self._retry = retry
        self._default_consistency = default_consistency
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._session: Any = None

    async def connect(self) -> None:
        """Connect once, or raise `StoreError` naming the contact points."""
        if self._session is not None:
            return
        try:
            await asyncio.to_thread(self._connect_blocking)
        except (DriverException, NoHostAvailable, ConnectionException) as error:
            log.error(
                "store.connect_failed",
                contact_points=self._contact_points,
                port=self._port,
                error=describe(error),
            )
            raise StoreError(
                f"cannot connect to CQL nodes {self._contact_points} on port "
                f"{self._port}: {describe(error)}"
            ) from error

    def _connect_blocking(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            cluster = Cluster(
                self._contact_points,
                port=self._port,
                protocol_version=PROTOCOL_VERSION,
                execution_profiles={EXEC_PROFILE_DEFAULT: self._profile()},
                connect_timeout=self._timeout_s,
                control_connection_timeout=self._timeout_s,
                reconnection_policy=ExponentialReconnectionPolicy(0.5, 30.0),
            )
            try:
                self._session = cluster.connect()
            except BaseException:
                cluster.shutdown()
                raise
            self._cluster = cluster
        log.info(
            "store.connected",
            backend="scylla",
            contact_points=self._contact_points,
            port=self._port,
            local_datacenter=self._local_datacenter,
        )

    def _profile(self) -> Any:
        # Retries happen in `execute`, with backoff and logging, so the
        # driver's own retry policy passes every error straight through.
        balancing = TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=self._local_datacenter)
        )
        return ExecutionProfile(
            load_balancing_policy=balancing,
            retry_policy=FallthroughRetryPolicy(),
            consistency_level=self._default_consistency,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            request_timeout=self._timeout_s,
            row_factory=dict_factory,
        )

    async def prepare(
        self, texts: Mapping[str, str], consistency: Mapping[str, int]
    ) -> dict[str, Any]:
        """Prepare each named statement as idempotent with its consistency level.

        Raises `StoreError` when a statement cannot be prepared, usually
        because the schema is missing.
        """
        await self.connect()
        try:
            return await asyncio.to_thread(self._prepare_blocking, texts, consistency)
        except DriverException as error:
            log.error("store.prepare_failed", error=describe(error))
            raise StoreError(
                f"cannot prepare the store's statements: {describe(error)}. "
                "Run `chatmesh store migrate` to create the schema"
            ) from error

    def _prepare_blocking(
        self, texts: Mapping[str, str], consistency: Mapping[str, int]
    ) -> dict[str, Any]:
        prepared: dict[str, Any] = {}
        for name, text in texts.items():
            statement = self._session.prepare(text)
            statement.is_idempotent = True
            statement.consistency_level = consistency[name]
            prepared[name] = statement
        return prepared

    async def execute(
        self,
        operation: str,
        statement: Any,
        params: Sequence[object] | None = None,
        paging_state: bytes | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> Page:
        """Run one idempotent statement, retrying timeouts and unavailability.

        `on_retry` is called before each retry, for callers whose result
        depends on whether an earlier attempt may have been applied. Raises
        `StoreError` naming `operation` when the error is not retryable or
        the last attempt failed.
        """
        await self.connect()
        attempt = 1
        while True:
            try:
                return await self._execute_once(statement, params, paging_state)
            except RETRYABLE_ERRORS as error:
                if attempt >= self._retry.max_attempts:
                    log.error(
                        "store.request_failed",
                        operation=operation,
                        attempts=attempt,
                        error=describe(error),
                    )
                    raise StoreError(
                        f"{operation} failed after {attempt} attempts: "
                        f"{describe(error)}"
                    ) from error
                delay_s = self._retry.delay_s(attempt)
                log.warning(
                    "store.request_retry",
                    operation=operation,
                    attempt=attempt,
                    delay_s=round(delay_s, 3),
                    error=describe(error),
                )
                await asyncio.sleep(delay_s)
                if on_retry is not None:
                    on_retry()
                attempt += 1
            except DriverException as error:
                log.error(
                    "store.request_failed", operation=operation, error=describe(error)
                )
                raise StoreError(f"{operation} failed: {describe(error)}") from error

    async def _execute_once(
        self,
        statement: Any,
        params: Sequence[object] | None,
        paging_state: bytes | None,
    ) -> Page:
        response = self._session.execute_async(
            statement, params, timeout=self._timeout_s, paging_state=paging_state
        )
        await _wait_for(response)
        # The response is complete, so result() returns without blocking.
        result = response.result()
        return Page(rows=list(result.current_rows), paging_state=result.paging_state)

    async def execute_cql(
        self, operation: str, query: str, params: Sequence[object] = ()
    ) -> list[dict[str, Any]]:
        """Run one unprepared, idempotent statement (DDL) and return all rows."""
        statement = SimpleStatement(query, is_idempotent=True)
        rows: list[dict[str, Any]] = []
        paging_state: bytes | None = None
        while True:
            page = await self.execute(
                operation, statement, params or None, paging_state
            )
            rows.extend(page.rows)
            if page.paging_state is None:
                return rows
            paging_state = page.paging_state

    def keyspace_exists(self, keyspace: str) -> bool:
        """Return whether the driver's schema metadata contains `keyspace`."""
        if self._cluster is None:
            return False
        return keyspace in self._cluster.metadata.keyspaces

    async def close(self) -> None:
        cluster = self._cluster
        self._cluster = None
        self._session = None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)
            log.info("store.closed", backend="scylla")


def _wait_for(response: Any) -> asyncio.Future[None]:
    """Return an asyncio future that completes when the driver's `response` does."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def on_success(_rows: object) -> None:
        _call_in_loop(loop, waiter, None)

    def on_error(error: BaseException) -> None:
        _call_in_loop(loop, waiter, error)

    response.add_callbacks(on_success, on_error)
    return waiter


def _call_in_loop(
    loop: asyncio.AbstractEventLoop,
    waiter: asyncio.Future[None],
    error: BaseException | None,
) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, waiter, error)
    except RuntimeError:
        # The loop closed while the request was in flight, so no task awaits it.
        log.debug("store.response_after_loop_closed")


def _resolve(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():  # cancelled by the awaiting task
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def describe(error: BaseException) -> str:
    """Return the error's type and message, for logs and `StoreError` text."""
    return f"{type(error).__name__}: {error}"
