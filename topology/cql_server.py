"""Run local Apache Cassandra nodes as CQL servers for tests and the local mesh.

ScyllaDB cannot be installed on the development machines, so tests run against
Apache Cassandra 5.0, which speaks the same CQL native protocol. The server jars
come from Maven Central through `topology/cassandra/pom.xml` and are cached once
per version. Each node runs as its own JVM with a generated `cassandra.yaml`,
`logback.xml` and rack/datacenter properties file in its work directory.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any, Final

import structlog
import yaml

from core.errors import ChatmeshError
from topology.processes import ProcessFailed

log = structlog.get_logger(__name__)

# Keep in step with `cassandra.version` in topology/cassandra/pom.xml.
CASSANDRA_VERSION: Final = "5.0.9"
CASSANDRA_HOME_ENV: Final = "CHATMESH_CASSANDRA_HOME"
JAVA_HOME_ENV: Final = "CHATMESH_JAVA_HOME"
POM_PATH: Final = Path(__file__).parent / "cassandra" / "pom.xml"
MAVEN_GOAL: Final = ("dependency:copy-dependencies", "-DincludeScope=runtime")
DOWNLOAD_PROGRESS_INTERVAL_S: Final = 5.0
DEFAULT_HEAP_MB: Final = 1024
MIN_HEAP_MB: Final = 256
# The heap starts this small and grows on demand, so an idle node stays small.
# Measured on a 2-core machine with Java 17 and a 768 MB maximum heap: about
# 0.65 GB RSS after boot with this start size, 1.2 GB with -Xms equal to -Xmx.
INITIAL_HEAP_MB: Final = 256
# Cassandra 5.0 logs this line once its CQL native transport accepts clients.
READY_LOG_LINE: Final = "Starting listening for CQL clients"
CASSANDRA_MAIN_CLASS: Final = "org.apache.cassandra.service.CassandraDaemon"
RACKDC_FILE: Final = "cassandra-rackdc.properties"
ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*m")
INSTALL_JAVA_HINT: Final = "Debian: apt-get install openjdk-17-jre-headless"
# How long `java -version` may take before the JVM counts as unusable.
JAVA_VERSION_TIMEOUT_S: Final = 30.0
# How long the supervisor's health check waits for a query on a running node.
HEALTH_QUERY_TIMEOUT_S: Final = 2.0

# Module access for Cassandra 5.0 on Java 17, following the --add-exports and
# --add-opens lines of Cassandra's conf/jvm17-server.options.
JVM_MODULE_FLAGS: Final[tuple[str, ...]] = (
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.nio.charset=ALL-UNNAMED",
)

# JVM options and Cassandra system properties for a disposable node. JMX stays
# off because neither `cassandra.jmx.local.port` nor `cassandra.jmx.remote.port`
# is set, so nodes on one machine need no JMX ports.
JVM_FLAGS: Final[tuple[str, ...]] = (
    "-XX:+UseG1GC",
    "-XX:+PerfDisableSharedMem",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djdk.attach.allowAttachSelf=true",
    "-Djava.net.preferIPv4Stack=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dchronicle.analytics.disable=true",
    "-Dcassandra-foreground=yes",
    # Faster boot. A node that is not ready for its peers yet is caught by
    # `wait_for_cluster`, not by these delays.
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=1000",
    "-Dcassandra.superuser_setup_delay_ms=0",
)
# Cassandra then skips the flush of its schema and system tables after each
# change. Schema changes get faster, but a node killed with SIGKILL loses
# the keyspaces and tables created since its last flush, so it cannot
# restart on its data.
UNSAFE_SYSTEM_FLAG: Final = "-Dcassandra.unsafesystem=true"

LOGBACK_XML: Final = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <root level="WARN">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


class CqlServerError(ChatmeshError):
    """A local Cassandra node could not be installed, started or reached."""


@dataclass(frozen=True)
class CqlNodeSpec:
    """The identity, addresses and resources of one local Cassandra node.

    `seeds` contains `address:storage_port` entries. An empty tuple makes the
    node its own seed, which is right for the first node of a cluster.
    `unsafe_system` speeds up schema changes for a node that is never
    restarted on its data (see `UNSAFE_SYSTEM_FLAG`).
    """

    name: str
    address: str
    native_port: int
    storage_port: int
    datacenter: str
    token: int
    work_dir: Path
    rack: str = "rack1"
    seeds: tuple[str, ...] = ()
    heap_mb: int = DEFAULT_HEAP_MB
    cluster_name: str = "chatmesh"
    unsafe_system: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("CqlNodeSpec.name must not be empty")
        for port in (self.native_port, self.storage_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} of {self.name} is outside 1..65535")
        if self.native_port == self.storage_port:
            raise ValueError(
                f"{self.name}: native_port equals storage_port {self.storage_port}"
            )
        if not -(2**63) <= self.token < 2**63:
            raise ValueError(f"token {self.token} is outside the Murmur3 range")
        if self.heap_mb < MIN_HEAP_MB:
            raise ValueError(f"heap_mb {self.heap_mb} is below {MIN_HEAP_MB}")

    @property
    def conf_dir(self) -> Path:
        return self.work_dir / "conf"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def seed_list(self) -> tuple[str, ...]:
        """Seeds as `address:storage_port`, defaulting to this node itself."""
        return self.seeds or (f"{self.address}:{self.storage_port}",)


# --- Java and the server jars ---------------------------------------------------


@cache
def find_java() -> Path:
    """Locate a Java 17 runtime, or raise `CqlServerError` naming what to install.

    `CHATMESH_JAVA_HOME` is tried first, then `JAVA_HOME`, then `java` on PATH.
    """
    home = os.environ.get(JAVA_HOME_ENV) or os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if found is None:
        raise CqlServerError(
            f"java not found on PATH; install Java 17 ({INSTALL_JAVA_HINT}) "
            f"or set {JAVA_HOME_ENV}"
        )
    major = _java_major_version(Path(found))
    if major != 17:
        raise CqlServerError(
            f"{found} is Java {major}, but the Cassandra JVM flags here are for "
            f"Java 17; set {JAVA_HOME_ENV} to a Java 17 home ({INSTALL_JAVA_HINT})"
        )
    return Path(found)


def _java_major_version(java: Path) -> int:
    try:
        result = subprocess.run(
            [str(java), "-version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=JAVA_VERSION_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise CqlServerError(f"running {java} -version failed: {error}") from error
    match = re.search(r'version "(\d+)', result.stderr)
    if match is None:
        raise CqlServerError(f"failed to parse the Java version from {result.stderr!r}")
    return int(match.group(1))


def cassandra_home() -> Path:
    """Return the cache folder for the server jars of `CASSANDRA_VERSION`."""
    override = os.environ.get(CASSANDRA_HOME_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "chatmesh" / f"cassandra-{CASSANDRA_VERSION}"


def ensure_cassandra_jars(timeout_s: float = 900.0) -> Path:
    """Download the Cassandra server jars once and return the folder of jars.

    The jars (about 70 MB) go to `cassandra_home() / "lib"`. A marker file
    written after a complete copy makes later calls return at once. A file
    lock serialises concurrent callers, and a half-finished download is
    discarded and repeated.
    """
    home = cassandra_home()
    lib_dir = home / "lib"
    marker = home / ".complete"
    if marker.exists():
        return lib_dir
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".download.lock"):
        if not marker.exists():
            _download_jars(home, lib_dir, timeout_s)
            marker.write_text(CASSANDRA_VERSION + "\n")
    return lib_dir


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_jars(home: Path, lib_dir: Path, timeout_s: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise CqlServerError(
            "mvn not found on PATH; install Apache Maven (Debian: apt-get install "
            "maven) to download the Cassandra server jars"
        )
    find_java()
    partial_dir = home / "lib.partial"
    for stale in (partial_dir, lib_dir):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.copyfile(POM_PATH, home / "pom.xml")
    command = [mvn, "-q", "-B", "-f", str(home / "pom.xml")]
    command += [*MAVEN_GOAL, f"-DoutputDirectory={partial_dir}"]
    log.info(
        "cassandra_jars.downloading", version=CASSANDRA_VERSION, lib_dir=str(lib_dir)
    )
    started = time.monotonic()
    _run_maven(command, home / "mvn.log", timeout_s)
    jars = list(partial_dir.glob("*.jar"))
    size_mb = round(sum(jar.stat().st_size for jar in jars) / 1e6, 1)
    elapsed_s = round(time.monotonic() - started, 1)
    log.info(
        "cassandra_jars.ready", jars=len(jars), size_mb=size_mb, elapsed_s=elapsed_s
    )
    partial_dir.rename(lib_dir)


def _run_maven(command: list[str], output_path: Path, timeout_s: float) -> None:
    """Run mvn, log a progress line every few seconds, and raise if it fails."""
    started = time.monotonic()
    with output_path.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=output_path.parent
        )
        while (returncode := _poll(process, DOWNLOAD_PROGRESS_INTERVAL_S)) is None:
            elapsed_s = round(time.monotonic() - started)
            log.info("cassandra_jars.still_downloading", elapsed_s=elapsed_s)
            if elapsed_s > timeout_s:
                process.kill()
                process.wait()
                raise CqlServerError(
                    f"mvn timed out after {timeout_s:.0f} s downloading the "
                    "Cassandra jars; check access to Maven Central and retry"
                )
    if returncode != 0:
        raise CqlServerError(
            f"mvn failed with exit code {returncode} while downloading Cassandra "
            f"{CASSANDRA_VERSION} jars:\n{_tail(output_path, 30)}"
        )


def _poll(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    text = ANSI_ESCAPE.sub("", text)  # Maven 3.8 colours even in batch mode
    return "\n".join(text.splitlines()[-lines:])


# --- Per-node configuration -----------------------------------------------------


def cassandra_config(spec: CqlNodeSpec) -> dict[str, object]:
    """Build the `cassandra.yaml` settings for one node.

    Cassandra rejects unknown keys, so every key here must exist in 5.0.
    """
    data = spec.data_dir
    seeds = ",".join(spec.seed_list)
    return {
        "cluster_name": spec.cluster_name,
        "num_tokens": 1,
        "initial_token": str(spec.token),
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "GossipingPropertyFileSnitch",
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": seeds}],
            }
        ],
        "listen_address": spec.address,
        "rpc_address": spec.address,
        "storage_port": spec.storage_port,
        "native_transport_port": spec.native_port,
        "start_native_transport": True,
        # Nodes join an empty cluster, so there is no data to stream in.
        "auto_bootstrap": False,
        "auto_snapshot": False,
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "data_file_directories": [str(data / "data")],
        "commitlog_directory": str(data / "commitlog"),
        "hints_directory": str(data / "hints"),
        "saved_caches_directory": str(data / "saved_caches"),
        "cdc_raw_directory": str(data / "cdc_raw"),
        # A fresh 5.0 cluster needs no compatibility with 4.x sstables.
        "storage_compatibility_mode": "NONE",
        # Cassandra's defaults (5 KiB warn, 50 KiB fail) reject modest
        # multi-row batches that tests write.
        "batch_size_warn_threshold": "128KiB",
        "batch_size_fail_threshold": "1024KiB",
    }


def _write_config(spec: CqlNodeSpec) -> None:
    conf = spec.conf_dir
    (conf / "triggers").mkdir(parents=True, exist_ok=True)
    (spec.work_dir / "logs").mkdir(exist_ok=True)
    config_yaml = yaml.safe_dump(cassandra_config(spec), sort_keys=False)
    (conf / "cassandra.yaml").write_text(config_yaml)
    (conf / "logback.xml").write_text(LOGBACK_XML)
    (conf / RACKDC_FILE).write_text(f"dc={spec.datacenter}\nrack={spec.rack}\n")


def jvm_command(spec: CqlNodeSpec, java: Path, lib_dir: Path) -> list[str]:
    """Build the `java` command line that runs one node in the foreground."""
    jamm_jars = sorted(lib_dir.glob("jamm-*.jar"))
    if not jamm_jars:
        raise CqlServerError(
            f"no jamm-*.jar in {lib_dir}; delete {lib_dir.parent} to download "
            "the Cassandra jars again"
        )
    conf = spec.conf_dir
    return [
        str(java),
        f"-Xms{min(INITIAL_HEAP_MB, spec.heap_mb)}m",
        f"-Xmx{spec.heap_mb}m",
        f"-javaagent:{jamm_jars[-1]}",
        *JVM_MODULE_FLAGS,
        *JVM_FLAGS,
        *([UNSAFE_SYSTEM_FLAG] if spec.unsafe_system else []),
        f"-Dcassandra.config={(conf / 'cassandra.yaml').as_uri()}",
        f"-Dcassandra-rackdc.properties={(conf / RACKDC_FILE).as_uri()}",
        f"-Dlogback.configurationFile={(conf / 'logback.xml').as_uri()}",
        f"-Dcassandra.logdir={spec.work_dir / 'logs'}",
        f"-Dcassandra.storagedir={spec.data_dir}",
        f"-Dcassandra.triggers_dir={conf / 'triggers'}",
        "-cp",
        f"{lib_dir}/*",
        CASSANDRA_MAIN_CLASS,
    ]


# --- Node process ---------------------------------------------------------------


class CqlNode:
    """One Cassandra JVM, started from a `CqlNodeSpec`.

    The JVM's stdout and stderr go to `cassandra.log` in the work directory.
    """

    def __init__(self, spec: CqlNodeSpec, lib_dir: Path | None = None) -> None:
        self.spec = spec
        self.log_path = spec.work_dir / "cassandra.log"
        self._lib_dir = lib_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._log_offset = 0
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The JVM's exit status once it has exited, else None."""
        return None if self._process is None else self._process.poll()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, keep_data: bool = False) -> None:
        """Spawn the JVM, by default with an empty data directory.

        With `keep_data` the node starts on the data of its previous run and
        replays its commit log, as after a crash.
        """
        if self.is_running():
            raise CqlServerError(f"CQL node {self.spec.name} is already running")
        lib_dir = self._lib_dir or ensure_cassandra_jars()
        java = find_java()
        if not keep_data:
            shutil.rmtree(self.spec.data_dir, ignore_errors=True)
        # A JVM that exited without `stop()` leaves its log file handle open.
        self._close_output()
        _write_config(self.spec)
        self._spawn(jvm_command(self.spec, java, lib_dir))
        log.info(
            "cql_server.starting",
            node=self.spec.name,
            address=f"{self.spec.address}:{self.spec.native_port}",
            datacenter=self.spec.datacenter,
            pid=self.pid,
            log_path=str(self.log_path),
        )

    def _spawn(self, command: list[str]) -> None:
        self._output = self.log_path.open("ab")
        self._log_offset = self._output.tell()
        self._started_at = time.monotonic()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self.spec.work_dir,
            # Ctrl-C in a terminal then reaches the launcher only, which
            # stops the store after the processes that use it.
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until the node serves CQL, or raise with the log's tail.

        Ready means the log shows the CQL listener started and a query on
        `system.local` succeeded.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.raise_if_exited()
            if self.log_contains(READY_LOG_LINE) and self.serves_cql():
                boot_s = round(time.monotonic() - self._started_at, 1)
                log.info("cql_server.ready", node=self.spec.name, boot_s=boot_s)
                return
            time.sleep(0.5)
        log.error(
            "cql_server.start_timed_out", node=self.spec.name, timeout_s=timeout_s
        )
        raise CqlServerError(
            f"CQL node {self.spec.name} was not ready within {timeout_s:.0f} s"
            + self._log_excerpt()
        )

    def raise_if_exited(self) -> None:
        """Raise `CqlServerError` with the log's tail if the JVM is not running."""
        if self._process is None:
            raise CqlServerError(f"CQL node {self.spec.name} was never started")
        returncode = self._process.poll()
        if returncode is not None:
            log.error("cql_server.exited", node=self.spec.name, returncode=returncode)
            raise CqlServerError(
                f"CQL node {self.spec.name} exited with code {returncode}"
                + self._log_excerpt()
            )

    def log_contains(self, text: str) -> bool:
        """Return whether the output since the latest `start()` contains `text`."""
        return text in self._output_since_start()

    def replayed_mutations(self) -> int | None:
        """Return how many commit log mutations the latest start replayed.

        None if the log since that start has no replay line yet.
        """
        found = re.findall(
            r"Log replay complete, (\d+) replayed mutations", self._output_since_start()
        )
        return int(found[-1]) if found else None

    def _output_since_start(self) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", errors="replace")

    def _log_excerpt(self) -> str:
        """Format the ERROR lines, each with the line after it, and the log's tail.

        Cassandra logs the cause of a failed start as an ERROR line followed by
        the exception, and then many lines of shutdown, so the tail alone
        rarely shows the cause.
        """
        lines = self._output_since_start().splitlines()
        errors = [
            "\n".join(lines[index : index + 2])
            for index, line in enumerate(lines)
            if line.startswith("ERROR")
        ]
        return (
            f"\nERROR lines in {self.log_path}:\n"
            + "\n".join(errors[:10])
            + f"\nlast lines:\n{self.log_tail(20)}"
        )

    def serves_cql(self, timeout_s: float = 10.0) -> bool:
        """Return whether a query on `system.local` succeeds within `timeout_s`."""
        statement = "SELECT release_version FROM system.local"
        try:
            query_one_node(
                self.spec.address, self.spec.native_port, statement, timeout_s
            )
        except Exception as error:  # the driver raises many unrelated types
            log.debug("cql_server.query_failed", node=self.spec.name, error=str(error))
            return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def peak_rss_bytes(self) -> int | None:
        """Return the JVM's peak resident set size (VmHWM), or None if it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return None if match is None else int(match.group(1)) * 1024

    def stop(self, grace_s: float = 30.0) -> None:
        """Send SIGTERM, then SIGKILL if the JVM has not exited after `grace_s`."""
        if not self.is_running():
            self._close_output()
            return
        peak_rss_mb = round((self.peak_rss_bytes() or 0) / 1e6)
        log.info("cql_server.stopping", node=self.spec.name, peak_rss_mb=peak_rss_mb)
        self._signal(signal.SIGCONT)  # a paused JVM would not handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self._wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "cql_server.stop_timed_out", node=self.spec.name, grace_s=grace_s
            )
            self.kill()
            return
        self._close_output()
        log.info("cql_server.stopped", node=self.spec.name)

    def kill(self) -> None:
        """Send SIGKILL and wait for the JVM to exit."""
        if self.is_running():
            self._signal(signal.SIGKILL)
            self._wait(None)
            log.info("cql_server.killed", node=self.spec.name)
        self._close_output()

    def pause(self) -> None:
        """Freeze the JVM with SIGSTOP, so peers and clients get no responses."""
        self._signal(signal.SIGSTOP)
        log.info("cql_server.paused", node=self.spec.name, pid=self.pid)

    def resume(self) -> None:
        """Continue a JVM frozen by `pause()`."""
        self._signal(signal.SIGCONT)
        log.info("cql_server.resumed", node=self.spec.name, pid=self.pid)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise CqlServerError(f"CQL node {self.spec.name} was never started")
        self._process.send_signal(signum)

    def _wait(self, timeout_s: float | None) -> None:
        if self._process is not None:
            self._process.wait(timeout=timeout_s)

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None


# --- Supervision ----------------------------------------------------------------


class CqlNodeProcess:
    """A started `CqlNode` with the interface of the launcher's supervisor.

    A start after the first keeps the node's data, so a node that was killed
    replays its commit log and serves CQL again.
    """

    def __init__(self, node: CqlNode) -> None:
        self.node = node
        self.name = node.spec.name
        self.log_path = node.log_path

    @property
    def pid(self) -> int | None:
        return self.node.pid

    @property
    def returncode(self) -> int | None:
        return self.node.returncode

    def running(self) -> bool:
        return self.node.is_running()

    def start(self) -> None:
        """Start the node again on its data; raise `ProcessFailed` if it cannot."""
        try:
            self.node.start(keep_data=True)
        except (CqlServerError, OSError, subprocess.SubprocessError) as exc:
            raise ProcessFailed(
                f"cannot start CQL node {self.name}: {exc}; its log is {self.log_path}"
            ) from exc

    async def wait_healthy(self, timeout_s: float) -> None:
        """Wait until the node serves CQL; raise `ProcessFailed` if it does not."""
        try:
            await asyncio.to_thread(self.node.wait_ready, timeout_s)
        except CqlServerError as exc:
            # A node that never became ready is stopped, so that the
            # supervisor's next attempt starts it afresh.
            self.node.stop()
            raise ProcessFailed(str(exc)) from exc

    async def check_health(self) -> bool:
        """Run one query on the node; False if it is not running or the query fails."""
        if not self.running():
            return False
        return await asyncio.to_thread(self.node.serves_cql, HEALTH_QUERY_TIMEOUT_S)

    def stop(self) -> None:
        self.node.stop()


# --- Clusters -------------------------------------------------------------------


def query_one_node(
    address: str, port: int, statement: str, timeout_s: float = 10.0
) -> list[Any]:
    """Run one CQL statement on the node at `address` only and return its rows."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([address]),
        request_timeout=timeout_s,
    )
    cluster = Cluster(
        [address],
        port=port,
        protocol_version=4,
        connect_timeout=timeout_s,
        control_connection_timeout=timeout_s,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        return list(cluster.connect().execute(statement))
    finally:
        cluster.shutdown()


def start_cluster(
    specs: Sequence[CqlNodeSpec], timeout_s: float = 180.0
) -> list[CqlNode]:
    """Start nodes one after another and wait until they all see each other.

    Put the seed first. Each node starts once the previous one serves CQL.
    If any step fails, the nodes already started are stopped before the
    error propagates.
    """
    lib_dir = ensure_cassandra_jars()
    nodes: list[CqlNode] = []
    started = time.monotonic()
    try:
        for spec in specs:
            nodes.append(CqlNode(spec, lib_dir))
            nodes[-1].start()
            nodes[-1].wait_ready(timeout_s)
        wait_for_cluster(nodes, timeout_s)
    except BaseException:
        for node in reversed(nodes):
            node.stop()
        raise
    boot_s = round(time.monotonic() - started, 1)
    log.info("cql_server.cluster_ready", nodes=len(nodes), boot_s=boot_s)
    return nodes


def wait_for_cluster(nodes: Sequence[CqlNode], timeout_s: float = 60.0) -> None:
    """Block until every node lists every other node as a peer that is UP.

    A node serves CQL before gossip has reached its peers. Until then a
    keyspace with NetworkTopologyStrategy has no replicas in a datacenter the
    coordinator has not heard of, so writes would skip it.
    """
    deadline = time.monotonic() + timeout_s
    while missing := _missing_peers(nodes):
        if time.monotonic() > deadline:
            raise CqlServerError(
                f"timed out after {timeout_s:.0f} s waiting for CQL nodes to see "
                f"each other as UP peers; missing (node, peer) pairs: {missing}. "
                "Check cassandra.log in each node's work directory"
            )
        time.sleep(0.5)


def _missing_peers(nodes: Sequence[CqlNode]) -> list[tuple[str, str]]:
    missing: list[tuple[str, str]] = []
    for node in nodes:
        node.raise_if_exited()
        others = [other for other in nodes if other is not node]
        if not all(node.log_contains(f"/{_endpoint(o)} is now UP") for o in others):
            missing.extend((node.spec.name, other.spec.name) for other in others)
            continue
        peers = _peer_datacenters(node) if others else {}
        for other in others:
            if peers.get(_endpoint(other)) != other.spec.datacenter:
                missing.append((node.spec.name, other.spec.name))
    return missing


def _endpoint(node: CqlNode) -> str:
    return f"{node.spec.address}:{node.spec.storage_port}"


def _peer_datacenters(node: CqlNode) -> dict[str, str]:
    """Map `address:port` of each peer in `system.peers_v2` to its datacenter."""
    statement = "SELECT peer, peer_port, data_center FROM system.peers_v2"
    try:
        rows = query_one_node(node.spec.address, node.spec.native_port, statement)
    except Exception as error:  # the driver raises many unrelated types
        log.debug(
            "cql_server.peers_query_failed", node=node.spec.name, error=str(error)
        )
        return {}
    return {f"{row.peer}:{row.peer_port}": str(row.data_center) for row in rows}
