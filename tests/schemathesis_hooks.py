"""Schemathesis hooks for the HTTP API run in tests/test_http_transport.py.

Loaded through the SCHEMATHESIS_HOOKS environment variable.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# A valid long poll may wait 30 s; the run only needs to reach the server code.
MAX_TEST_WAIT_S = 0.2


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: Any) -> None:
    """Shorten generated long polls so the run finishes in minutes."""
    query = case.query
    if not query or "wait_s" not in query:
        return
    wait = query["wait_s"]
    is_number = isinstance(wait, int | float) and not isinstance(wait, bool)
    if is_number and 0 < wait <= 30:
        query["wait_s"] = MAX_TEST_WAIT_S
