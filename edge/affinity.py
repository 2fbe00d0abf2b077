"""Session affinity: every connection of a user in a region lands on one edge.

The owner is chosen by rendezvous hashing over the region's edges, so every
edge computes the same owner without coordination, and removing an edge
moves only the users it owned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def owner_edge(user: str, edges: Sequence[str]) -> str:
    """Return the edge of `edges` that owns `user`'s sessions."""
    if not edges:
        raise ValueError("a region needs at least one edge")
    return max(edges, key=lambda edge: _score(edge, user))


def _score(edge: str, user: str) -> int:
    digest = hashlib.blake2b(f"{edge}\x00{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
