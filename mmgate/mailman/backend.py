"""What the gateway needs of a Mailman, wherever that Mailman is.

Two implementations: :class:`~mmgate.mailman.local.LocalMailman` (this host,
in-process, queue files) and :class:`~mmgate.mailman.remote.RemoteMailman`
(REST and LMTP). The gateway talks to this interface only, so the delivery
contract is kept the same way on both: copies are staged, the relayed copy
goes upstream, then the copies are committed or discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mmgate.mailman.routing import Route, Snapshot
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled


class MailmanUnavailable(Exception):
    """Mailman could not be used; the text says what failed, in one line."""


@dataclass
class Staged:
    """List copies prepared, waiting for the transaction's verdict."""

    files: list[tuple[str, str]]  # (staging directory, filebase)
    message_id: str

    @property
    def pending(self) -> bool:
        """Is there anything for commit (or discard) to do?"""
        return bool(self.files)


class MailmanBackend(Protocol):
    staging_dir: Path | None

    def start(self) -> Snapshot:
        """Connect (or initialize) and take the first snapshot, or raise
        :class:`MailmanUnavailable`."""

    def open(self) -> Snapshot:
        """Like start(), for a reader that injects nothing (no recovery)."""

    async def snapshot(self) -> Snapshot: ...

    async def stage(
        self,
        data: bytes | Spooled,
        mail_from: str,
        routes: list[Route],
        snap: Snapshot,
        *,
        direct: bool = False,
    ) -> Staged | Reply:
        """Prepare the list copies; ``direct`` delivers them at once."""

    async def commit(self, staged: Staged) -> None:
        """Deliver staged copies; raises OSError or DeliveryFailed."""

    async def discard(self, staged: Staged) -> None: ...
