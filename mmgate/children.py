"""Child processes of ``mmgate serve`` (the admin API, Mailman's runners)."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable


def die_with_parent() -> Callable[[], None] | None:
    """For a child, run after fork: SIGTERM when mmgate serve dies, however
    it dies, so no child outlives it holding a port or a lock (Linux's
    PR_SET_PDEATHSIG). Looked up here, in the parent: nothing may be
    imported between fork and exec."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: serve's own exit path still stops the child

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return arm
