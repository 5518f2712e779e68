"""Which event loop mmgate runs on.

uvloop (libuv transports, maintained by the asyncio core developers) cuts
the per-read and per-write cost of the loop itself, which is most of an SMTP
server's time when clients do not pipeline; benchmarks/engine.py shows the
difference on both mmgate and aiosmtpd. ``MMGATE_LOOP=asyncio`` selects the
standard loop; ``auto`` (the default) takes uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_CHOICES = ("auto", "uvloop", "asyncio")


class LoopChoiceError(ValueError):
    """MMGATE_LOOP names no loop this machine has."""


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    choice = (choice or os.environ.get("MMGATE_LOOP") or "auto").lower()
    if choice not in _CHOICES:
        raise LoopChoiceError(f"MMGATE_LOOP must be one of {', '.join(_CHOICES)}, not {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise LoopChoiceError("MMGATE_LOOP=uvloop but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
