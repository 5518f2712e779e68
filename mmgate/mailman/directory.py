"""The gateway's view of Mailman: a routing snapshot, refreshed in the background.

RCPT is answered from memory (no database query per recipient); a task
re-reads Mailman every ``refresh_interval`` seconds and hands each new
snapshot to ``publish`` (the router), so a list created or deleted while
mmgate runs is routed accordingly within that time. When Mailman cannot be
read, the last snapshot is kept; the router turns list-domain verdicts
temporary once that snapshot is too old (see :mod:`mmgate.router`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mmgate.mailman.routing import Snapshot

log = logging.getLogger("mmgate.mailman")


class Directory:
    def __init__(
        self,
        read: Callable[[], Awaitable[Snapshot]],
        publish: Callable[[Snapshot], None],
        *,
        refresh_interval: float = 2.0,
    ) -> None:
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be above 0 seconds, not {refresh_interval}")
        self._read = read
        self._publish = publish
        self.refresh_interval = refresh_interval
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Read Mailman now; False (and the reason logged) if it failed."""
        try:
            snapshot = await self._read()
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            if reason != self.last_error:
                log.error("Mailman directory refresh failed: %s", reason)
            self.last_error = reason
            return False
        self._publish(snapshot)
        if self.last_error is not None:
            log.warning("Mailman directory readable again")
        self.last_error = None
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
