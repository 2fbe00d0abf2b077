"""Run one core worker process until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from core.metrics import CoreMetrics, serve_metrics
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
    metrics = CoreMetrics()
    server, _ = serve_metrics(
        metrics.registry, topology.core.host, topology.core.metrics_port
    )
    worker = CoreWorker(topology, worker_id, base_dir, metrics, auth)
    await worker.start()
    try:
        await stop.wait()
    finally:
        await worker.stop()
        server.shutdown()
