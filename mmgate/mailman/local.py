"""Mailman on this host, used in-process: its list directory and its queues.

Mailman's configuration is global to a process (``initialize`` may run once)
and its database sessions are per thread, so every call into Mailman's
model runs on one dedicated thread. Queue files need no database: they are
written in Mailman's own format by :mod:`mmgate.mailman.spool`, on its
writer thread; messages over ``INLINE_LIMIT`` are parsed on a worker so the
event loop never stalls on a big one.

Injection is staged when it must be. In a transaction that also relays,
each list copy is written (fsynced) into a staging directory beside the
queues and moved into the real queue with one rename once the whole
transaction can be acknowledged, so a relay failure discards the copies
instead of leaving a half-done delivery; leftovers of a crash are removed
at start-up (their client never heard 250 and will retry). A transaction
with no relayed recipient has nothing to wait for: its copies are written
straight into the queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.utils
import logging
import os
import pickle
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.feedparser import BytesFeedParser
from pathlib import Path
from typing import Any, TypeVar

from mmgate.mailman.backend import MailmanUnavailable, Staged
from mmgate.mailman.routing import Route, Snapshot
from mmgate.mailman.spool import QueueFile, QueueWriter, queue_file
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled, give_back_memory

log = logging.getLogger("mmgate.mailman")
T = TypeVar("T")

#: Mailman's LMTP runner answers 501 to a message with header defects.
DEFECTS = Reply(550, "5.6.0", "Message has defects (refused as Mailman does)")
QUEUE_UNAVAILABLE = Reply(451, "4.3.0", "Mailman's queue is not available, try again later")
#: Messages up to this size are prepared on the event loop's thread.
INLINE_LIMIT = 64 * 1024
_initialized: list[str] = []  # the config Mailman was initialized with here
_ONE_LARGE = threading.Lock()


_init_lock = threading.Lock()


class LocalMailman:
    """A Mailman whose configuration file is readable here."""

    def __init__(
        self, config_path: str | Path, *, queue_workers: int = 4, spool_sync: str = "batch"
    ) -> None:
        self.config_path = str(Path(config_path).resolve())
        self._model = ThreadPoolExecutor(1, thread_name_prefix="mailman-model")
        self._queues = ThreadPoolExecutor(queue_workers, thread_name_prefix="mailman-queue")
        self._staging: dict[str, str] = {}  # queue -> its staging directory
        self._writer = QueueWriter(spool_sync)
        self.staging_dir: Path | None = None

    # -- start-up --------------------------------------------------------
    def start(self) -> Snapshot:
        """For the server that injects: initialize Mailman, recover staging
        (remove copies of transactions a crash left unanswered), snapshot."""
        return self._model.submit(self._start).result()

    def open(self) -> Snapshot:
        """For readers (``mmgate route``, the admin API): initialize and
        snapshot, leaving the staging directory of a running server alone."""
        return self._model.submit(self._open).result()

    def _open(self) -> Snapshot:
        self._initialize()
        return self._snapshot()

    def _initialize(self) -> None:
        if not os.path.isfile(self.config_path):
            raise MailmanUnavailable(f"{self.config_path}: no such Mailman configuration file")
        with _init_lock:
            if not _initialized:
                from mailman.core.initialize import initialize

                try:
                    initialize(self.config_path)
                except Exception as exc:
                    raise MailmanUnavailable(
                        f"{self.config_path}: Mailman did not start: {exc}"
                    ) from None
                _initialized.append(self.config_path)
            elif _initialized[0] != self.config_path:
                raise MailmanUnavailable(
                    f"Mailman is already initialized here with {_initialized[0]}; "
                    "one process serves one Mailman"
                )

    def _start(self) -> Snapshot:
        self._initialize()
        from mailman.config import config

        self.staging_dir = Path(config.QUEUE_DIR) / ".mmgate-staging"
        if self.staging_dir.exists():
            leftovers = sum(1 for _ in self.staging_dir.rglob("*.pck*"))
            if leftovers:
                log.warning("removing %d staged list copies of unacknowledged messages", leftovers)
            shutil.rmtree(self.staging_dir)
        for queue in ("in", "command", "bounces"):
            self._staging[queue] = str(self.staging_dir / queue)
            os.makedirs(self._staging[queue], 0o770, exist_ok=True)
        return self._snapshot()

    # -- the directory ---------------------------------------------------
    async def snapshot(self) -> Snapshot:
        return await self._run(self._model, self._snapshot)

    def _snapshot(self) -> Snapshot:
        from mailman.config import config
        from mailman.interfaces.domain import IDomainManager
        from mailman.interfaces.listmanager import IListManager
        from zope.component import getUtility

        try:
            lists = {
                mlist.fqdn_listname.lower(): mlist.list_id
                for mlist in getUtility(IListManager).mailing_lists
            }
            domains, aliases = set(), {}
            for domain in getUtility(IDomainManager):
                domains.add(domain.mail_host.lower())
                if domain.alias_domain:
                    aliases[domain.alias_domain.lower()] = domain.mail_host.lower()
        except Exception as exc:
            raise MailmanUnavailable(f"cannot read Mailman's lists: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):  # if the database failed, nothing to undo
                config.db.abort()
        return Snapshot(
            lists=lists,
            domains=frozenset(domains),
            aliases=aliases,
            verp_delimiter=config.mta.verp_delimiter,
            site_owner=config.mailman.site_owner,
        )

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the Mailman thread and wait (for tools and tests)."""
        return self._model.submit(fn).result()

    async def call_async(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the Mailman thread without blocking the event loop."""
        return await self._run(self._model, fn)

    # -- the queues ------------------------------------------------------
    async def stage(
        self,
        data: bytes | Spooled,
        mail_from: str,
        routes: list[Route],
        snap: Snapshot,
        *,
        direct: bool = False,
    ) -> Staged | Reply:
        """Write the list copies: into staging, or with ``direct`` straight into
        Mailman's queues (when nothing else in the transaction can fail)."""
        if isinstance(data, Spooled) or len(data) > INLINE_LIMIT:
            # parsing a big message would stall the loop
            prepared = await self._run(
                self._queues, self._prepare, data, mail_from, routes, snap, direct
            )
        else:
            prepared = self._prepare(data, mail_from, routes, snap, direct)
        if isinstance(prepared, Reply):
            return prepared
        files, message_id = prepared
        try:
            await self._writer.write(files)
        except OSError as exc:
            log.error("cannot write to Mailman's queue: %s", exc)
            return QUEUE_UNAVAILABLE
        return Staged([] if direct else [(qf.directory, qf.filebase) for qf in files], message_id)

    async def commit(self, staged: Staged) -> None:
        await self._run(self._queues, self._commit, staged)

    async def discard(self, staged: Staged) -> None:
        await self._run(self._queues, self._discard, staged)

    def _prepare(
        self,
        data: bytes | Spooled,
        mail_from: str,
        routes: list[Route],
        snap: Snapshot,
        direct: bool,
    ) -> tuple[list[QueueFile], str] | Reply:
        """The header work of mailman.runners.lmtp.LMTPHandler._handle_DATA,
        then one queue entry per list copy.

        Spooled (large) messages are prepared one at a time, and the memory
        their parse and pickle used is handed back to the system afterwards
        (malloc_trim): a parsed message and its pickle are about twice its
        size, and a dozen large posts ending at once must not add up. The
        trim runs once ``_entries`` has returned, when the parsed message
        and its pickle are no longer referenced by its frame.
        """
        if not isinstance(data, Spooled):
            return self._entries(data, mail_from, routes, snap, direct)
        with _ONE_LARGE:
            try:
                return self._entries(data, mail_from, routes, snap, direct)
            finally:
                give_back_memory()

    def _entries(
        self,
        data: bytes | Spooled,
        mail_from: str,
        routes: list[Route],
        snap: Snapshot,
        direct: bool,
    ) -> tuple[list[QueueFile], str] | Reply:
        from mailman.config import config
        from mailman.email.message import Message
        from mailman.utilities.datetime import now
        from mailman.utilities.email import add_message_hash

        try:
            if isinstance(data, Spooled):
                # parsed from the file a block at a time: the raw text is
                # never held whole beside the parsed message
                parser = BytesFeedParser(Message)
                for block in data.blocks():
                    parser.feed(block)
                msg = parser.close()
                size = data.size
            else:
                msg = email.message_from_bytes(data, Message)
                size = len(data)
            msg.set_unixfrom(mail_from)
        except Exception:
            log.exception("cannot parse a message for Mailman")
            return QUEUE_UNAVAILABLE
        message_id = msg.get("message-id")
        if message_id is None:
            message_id = email.utils.make_msgid()
            msg["Message-ID"] = message_id
        new_mid = re.sub(r"^<?\[(.*)\]>?", r"<\1>", message_id)
        if new_mid != message_id:
            msg.replace_header("Message-ID", new_mid)
        if msg.defects:
            return DEFECTS
        msg.original_size = size
        add_message_hash(msg)
        msg["X-MailFrom"] = mail_from
        received_time = now()
        msgsave = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
        files = []
        for route in routes:
            assert route.queue is not None
            directory = (
                config.switchboards[route.queue].queue_directory
                if direct
                else self._staging[route.queue]
            )
            msgdata = route.msgdata(
                original_size=msg.original_size,
                received_time=received_time,
                site_owner=snap.site_owner,
            )
            files.append(queue_file(directory, msgsave, msgdata, config.QFILE_SCHEMA_VERSION))
        return files, str(msg["message-id"])

    def _commit(self, staged: Staged) -> None:
        from mailman.config import config

        for directory, filebase in staged.files:
            queue = os.path.basename(directory)
            dst = config.switchboards[queue].queue_directory
            os.rename(
                os.path.join(directory, filebase + ".pck"), os.path.join(dst, filebase + ".pck")
            )

    def _discard(self, staged: Staged) -> None:
        for directory, filebase in staged.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, filebase + ".pck"))

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def queue_directory(queue: str) -> Path:
    """Where Mailman's ``queue`` lives (Mailman must be initialized)."""
    from mailman.config import config

    return Path(config.switchboards[queue].queue_directory)
