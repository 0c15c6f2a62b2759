"""Fault injection for the kill-and-resume tests: SIGKILL this process at a named point.

Long commands (training, pseudo-labelling, recipes) call `maybe_kill(event)` at the points where
a real interruption would hurt most (after an optimizer step, after an image is labelled,
between recipe stages). Nothing happens unless the environment variable
`UDASEG_TEST_SIGKILL_AT` is `<event>#<n>`: then the n-th call with that event (1-based, counted
in this process) kills the process with SIGKILL, which no handler can intercept, exactly as an
out-of-memory killer or a lost machine would. Tests use it to stop a run at a precise point
without racing against it.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "UDASEG_TEST_SIGKILL_AT"

_counts: dict[str, int] = {}


def maybe_kill(event: str) -> None:
    """Count `event`; SIGKILL this process if `UDASEG_TEST_SIGKILL_AT` asks for this call."""
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if not wanted:
        return
    name, _, count = wanted.partition("#")
    if name != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
