"""CPU time and memory of processes, read from Linux's /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds a process used (user + system) up to `at_s` (monotonic)."""

    pid: int
    cpu_s: float
    at_s: float


@dataclass(frozen=True)
class ProcessUsage:
    """One process's CPU share over a measured window and its memory at the end."""

    name: str
    pid: int
    cpu_percent: float
    rss_mib: float
    peak_rss_mib: float


def sample_cpu(pid: int, at_s: float) -> CpuSample | None:
    """Read the CPU time of `pid`; None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5), counted from 1.
    ticks = int(fields[11]) + int(fields[12])
    return CpuSample(pid, ticks / CLOCK_TICKS_PER_S, at_s)


def memory_mib(pid: int) -> tuple[float, float]:
    """Return (resident, peak resident) MiB of `pid`, or zeros when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    values: dict[str, float] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def usage(
    name: str, before: CpuSample | None, after: CpuSample | None
) -> ProcessUsage | None:
    """Return the CPU share between two samples of one process."""
    if before is None or after is None or after.at_s <= before.at_s:
        return None
    share = (after.cpu_s - before.cpu_s) / (after.at_s - before.at_s)
    rss, peak = memory_mib(after.pid)
    return ProcessUsage(
        name=name,
        pid=after.pid,
        cpu_percent=round(share * 100, 1),
        rss_mib=round(rss, 1),
        peak_rss_mib=round(peak, 1),
    )


def machine_busy_s() -> float:
    """Return CPU seconds all cores of the machine spent busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS_PER_S


class CpuWindow:
    """CPU samples of named processes at the start of a window, to diff at its end."""

    def __init__(self, pids: dict[str, int], now_s: float) -> None:
        self._pids = dict(pids)
        self._before = {name: sample_cpu(pid, now_s) for name, pid in pids.items()}
        self._machine_before = (machine_busy_s(), now_s)
        self.machine_percent = 0.0

    def close(self, now_s: float) -> list[ProcessUsage]:
        """Return each process's usage; also set `machine_percent` (all cores)."""
        busy_before, at_before = self._machine_before
        if now_s > at_before:
            share = (machine_busy_s() - busy_before) / (now_s - at_before)
            self.machine_percent = round(share * 100, 1)
        result = []
        for name, pid in self._pids.items():
            measured = usage(name, self._before[name], sample_cpu(pid, now_s))
            if measured is not None:
                result.append(measured)
        return result
