"""Run one core worker process until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from core.natsconn import NatsAuth
from core.worker import CoreWorker
from topology.model import Topology


def run_core(
    topology: Topology, worker_id: int, base_dir: Path, auth: NatsAuth
) -> None:
    asyncio.run(_serve(topology, worker_id, base_dir, auth))


async def _serve(
    topology: Topology, worker_id: int, base_dir: Path, auth: NatsAuth
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = CoreWorker(topology, worker_id, base_dir, auth)
    await worker.start()
    try:
        await stop.wait()
    finally:
        await worker.stop()
