"""Lookup of a running mesh's endpoints for the command-line tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from topology.launcher import RunLayout

DEFAULT_RUN_DIR = Path("run")


def read_endpoints(run_dir: Path) -> dict[str, Any]:
    """Return the endpoints written by a running `chatmesh up`.

    Raises `FileNotFoundError` when no mesh runs in `run_dir`.
    """
    path = RunLayout(run_dir).endpoints
    if not path.exists():
        raise FileNotFoundError(
            f"no running mesh found: {path} is missing; start one with `chatmesh up` "
            "or pass --run-dir"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def region_url(run_dir: Path, region: str) -> str:
    """Return the WebSocket URL of the first edge of `region` in a running mesh."""
    regions = read_endpoints(run_dir)["regions"]
    if region not in regions:
        raise LookupError(
            f"unknown region {region!r}; the mesh has: {', '.join(regions)}"
        )
    edges: dict[str, str] = regions[region]["edges"]
    return next(iter(edges.values()))
