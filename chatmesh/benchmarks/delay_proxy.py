"""A TCP proxy that delays every byte by a fixed time in each direction.

The benchmark puts one between each leaf node and the hub to model the
round trip between regions: a proxy with `one_way_s` 0.075 adds 150 ms to
every round trip over the leaf link. Bytes keep their order and are never
dropped; the proxy adds delay, not bandwidth limits or loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

log = structlog.get_logger(__name__)

READ_BYTES = 65536


class DelayProxy:
    """Listen on a loopback port and forward to `target`, `one_way_s` later."""

    def __init__(self, target_host: str, target_port: int, one_way_s: float) -> None:
        self._target = (target_host, target_port)
        self._one_way_s = one_way_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; return the port."""
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "delay_proxy.started",
            port=self.port,
            target=f"{self._target[0]}:{self._target[1]}",
            one_way_ms=self._one_way_s * 1000,
        )
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("delay_proxy.stopped", port=self.port)

    async def _on_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError as exc:
            log.warning("delay_proxy.connect_failed", error=repr(exc))
            client_writer.close()
            return
        for reader, writer in (
            (client_reader, server_writer),
            (server_reader, client_writer),
        ):
            task = asyncio.create_task(self._pump(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction, releasing each chunk `one_way_s` after it arrived."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._release(queue, writer))
        try:
            while data := await reader.read(READ_BYTES):
                queue.put_nowait((time.monotonic() + self._one_way_s, data))
            queue.put_nowait((time.monotonic() + self._one_way_s, b""))
            await sender
        finally:
            sender.cancel()
            writer.close()

    async def _release(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                return
            writer.write(data)
            await writer.drain()
