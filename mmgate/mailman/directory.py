"""The gateway's view of Mailman: a routing snapshot, refreshed in the background.

RCPT is answered from memory (no database query per recipient); a task
re-reads Mailman every ``refresh_interval`` seconds, so a list created or
deleted while mmgate runs is routed accordingly within that time. When
Mailman cannot be read, the last snapshot is kept; once it is older than
``stale_after``, recipients in Mailman's domains get 451 4.3.0 instead of a
verdict that may be wrong, until Mailman answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from mmgate.mailman.routing import Route, RouteKind, Snapshot, classify
from mmgate.smtp.replies import Reply

log = logging.getLogger("mmgate.mailman")

DIRECTORY_UNAVAILABLE = Reply(451, "4.3.0", "Mailman's list directory is unavailable, try later")


class Directory:
    def __init__(
        self,
        read: Callable[[], Awaitable[Snapshot]],
        snapshot: Snapshot,
        *,
        refresh_interval: float = 2.0,
        stale_after: float = 60.0,
    ) -> None:
        self._read = read
        self.snapshot = snapshot
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self.last_success = time.monotonic()
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.last_success > self.stale_after

    def classify(self, address: str) -> Route:
        route = classify(address, self.snapshot)
        if route.kind is not RouteKind.RELAY and self.stale:
            return Route(address, RouteKind.REJECT, reply=DIRECTORY_UNAVAILABLE)
        return route

    async def refresh(self) -> bool:
        """Read Mailman now; False (and the reason logged) if it failed."""
        try:
            self.snapshot = await self._read()
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            if reason != self.last_error:
                log.error("Mailman directory refresh failed: %s", reason)
            self.last_error = reason
            return False
        if self.last_error is not None:
            log.warning("Mailman directory readable again")
        self.last_error = None
        self.last_success = time.monotonic()
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
