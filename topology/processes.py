"""A process wrapper with a readiness check, in the shape of a supervisor.

Each managed process writes stdout and stderr to its own log file, runs in
its own session (so signals to the launcher do not reach it twice), and is
ready when its health check passes, never after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]
STOP_GRACE_S = 10.0
POLL_INTERVAL_S = 0.05
# One health check that takes longer counts as failed; a probe that keeps
# reconnecting to a server must not hold up the start deadline.
HEALTH_CHECK_TIMEOUT_S = 5.0


class ProcessFailed(RuntimeError):
    """A managed process exited or never became healthy."""


class Supervised(Protocol):
    """The calls that the launcher's supervisor makes on a process it restarts."""

    name: str
    log_path: Path

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    def running(self) -> bool: ...

    def start(self) -> None: ...

    async def wait_healthy(self, timeout_s: float) -> None: ...

    async def check_health(self) -> bool: ...


class ManagedProcess:
    """One child process: start, wait until healthy, pause, kill, stop."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        health: HealthCheck,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._health = health
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited, else None."""
        return self._proc.poll() if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(self._env or {})},
            )
        log.info("process.started", process=self.name, pid=self._proc.pid)

    async def wait_healthy(self, timeout_s: float) -> None:
        """Poll the health check until it passes; raise `ProcessFailed` if not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise ProcessFailed(
                    f"{self.name} exited early; see {self.log_path}\n{self.tail()}"
                )
            try:
                async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
                    healthy = await self._health()
                if healthy:
                    log.info("process.healthy", process=self.name)
                    return
            except Exception as exc:
                log.debug("process.health_pending", process=self.name, error=repr(exc))
            await asyncio.sleep(POLL_INTERVAL_S)
        raise ProcessFailed(
            f"{self.name} was not healthy after {timeout_s:.0f} s; "
            f"see {self.log_path}\n{self.tail()}"
        )

    async def check_health(self) -> bool:
        """Run the health check once; False if it fails or raises."""
        try:
            if not self.running():
                return False
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
                return await self._health()
        except Exception as exc:
            log.debug("process.health_pending", process=self.name, error=repr(exc))
            return False

    def signal(self, sig: signal.Signals) -> None:
        if self.running():
            assert self._proc is not None
            self._proc.send_signal(sig)
            log.info("process.signalled", process=self.name, signal=sig.name)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Send SIGTERM (and SIGCONT, in case it is paused); SIGKILL after the grace."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.send_signal(signal.SIGCONT)
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "process.kill_after_grace", process=self.name, grace_s=grace_s
                )
                self._proc.kill()
                self._proc.wait()
        log.info("process.stopped", process=self.name, returncode=self._proc.returncode)
        return self._proc.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
            log.info("process.killed", process=self.name)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(
                self.log_path.read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"


def process_start_ticks(pid: int) -> int | None:
    """Return when `pid` started, in clock ticks since boot, or None if it is gone.

    A pid together with its start time names one process, even after the
    kernel reuses the pid. Linux only: it reads field 22 of /proc/PID/stat.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])
