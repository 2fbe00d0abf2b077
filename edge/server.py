"""Run one edge process under uvicorn."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from core.tokens import KeyStore, PublicKeys
from edge.app import create_app
from edge.runtime import EdgeIdentity
from topology.credentials import client_auth, edge_inbox_prefix, edge_user
from topology.model import Topology

# Frames carry at most a few KiB of content; anything far larger is abuse.
WS_MAX_FRAME_BYTES = 256 * 1024


def run_edge(
    topology: Topology,
    edge_name: str,
    public_keys_file: Path,
    nats_secrets: Path,
    private_keys_dir: Path,
) -> None:
    """Serve the edge called `edge_name` until SIGINT or SIGTERM.

    The edge reads the token public keys from `public_keys_file` and its NATS
    password from `nats_secrets`. It reads the token signing key from
    `private_keys_dir` only when the topology has `dev_users`, to mint
    development tokens.
    """
    region, edge = next(
        (r, e) for r in topology.regions for e in r.edges if e.name == edge_name
    )
    auth = client_auth(
        topology, nats_secrets, edge_user(edge.name), edge_inbox_prefix(edge.name)
    )
    dev_key = None
    if topology.dev_users:
        dev_key = KeyStore(private_keys_dir, public_keys_file).signing_key()
    identity = EdgeIdentity(
        topology, region, edge, PublicKeys(public_keys_file), auth, dev_key
    )
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
