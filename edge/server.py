"""Run one edge process under uvicorn."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from core.tokens import load_secret
from edge.app import create_app
from edge.runtime import EdgeIdentity
from topology.model import Topology

# Frames carry at most a few KiB of content; anything far larger is abuse.
WS_MAX_FRAME_BYTES = 256 * 1024


def run_edge(topology: Topology, edge_name: str, token_secret_file: Path) -> None:
    """Serve the edge called `edge_name` until SIGINT or SIGTERM."""
    region, edge = next(
        (r, e) for r in topology.regions for e in r.edges if e.name == edge_name
    )
    identity = EdgeIdentity(topology, region, edge, load_secret(token_secret_file))
    config = uvicorn.Config(
        create_app(identity),
        host=edge.host,
        port=edge.port,
        log_config=None,
        access_log=False,
        ws_max_size=WS_MAX_FRAME_BYTES,
        lifespan="on",
        # Long polls may wait 30 s; the launcher's stop grace is 10 s.
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
