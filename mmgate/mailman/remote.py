"""Mailman on another host: its REST API for lists, its LMTP runner for mail.

This is how mmgate fronts a Mailman it cannot load in-process, and how
several mmgate hosts share one Mailman. Lists, domains, the VERP delimiter
and the site owner are read from the REST API (``/3.1/lists``,
``/3.1/domains``, ``/3.1/system/configuration``); list copies are handed to
Mailman's LMTP runner, whose per-recipient replies after DATA (RFC 2033
4.2) are read one by one, which Python's smtplib does not do by itself.

Both clients are the standard library's (urllib, smtplib), run on worker
threads; neither is on the path of a recipient's verdict, which comes from
the cached snapshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import smtplib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgate.mailman.backend import MailmanUnavailable, Staged
from mmgate.mailman.routing import Route, Snapshot
from mmgate.relay.upstream import as_reply
from mmgate.smtp.framing import dot_stuff
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled

log = logging.getLogger("mmgate.mailman")

LMTP_UNREACHABLE = Reply(451, "4.4.1", "Mailman's LMTP runner is unreachable, try again later")


class DeliveryFailed(Exception):
    """Mailman's LMTP runner did not take every list copy; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass
class RemoteStaged(Staged):
    """A list delivery held until the transaction can be acknowledged."""

    data: bytes | Spooled = b""
    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return bool(self.recipients)


class RemoteMailman:
    def __init__(
        self,
        url: str,
        *,
        user: str,
        password: str,
        lmtp: tuple[str, int],
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.lmtp = lmtp
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="mailman-remote")
        self.staging_dir: Path | None = None

    # -- the directory, from REST ------------------------------------------
    def start(self) -> Snapshot:
        return self._snapshot()

    def open(self) -> Snapshot:
        return self._snapshot()

    async def snapshot(self) -> Snapshot:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._snapshot)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise MailmanUnavailable(f"{self.url}{path}: HTTP {exc.code} {exc.reason}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MailmanUnavailable(f"{self.url}: REST API unreachable: {reason}") from None

    def _snapshot(self) -> Snapshot:
        lists = {
            entry["fqdn_listname"].lower(): entry["list_id"]
            for entry in self._get("/3.1/lists").get("entries", [])
        }
        domains, aliases = set(), {}
        for entry in self._get("/3.1/domains").get("entries", []):
            domains.add(entry["mail_host"].lower())
            if entry.get("alias_domain"):
                aliases[entry["alias_domain"].lower()] = entry["mail_host"].lower()
        mta = self._get("/3.1/system/configuration/mta")
        site = self._get("/3.1/system/configuration/mailman")
        return Snapshot(
            lists=lists,
            domains=frozenset(domains),
            aliases=aliases,
            verp_delimiter=mta.get("verp_delimiter", "+"),
            site_owner=site.get("site_owner", "changeme@example.com"),
        )

    # -- list mail, over LMTP ----------------------------------------------
    async def stage(
        self,
        data: bytes | Spooled,
        mail_from: str,
        routes: list[Route],
        snap: Snapshot,
        *,
        direct: bool = False,
    ) -> Staged | Reply:
        staged = RemoteStaged([], "", data, mail_from, [r.address for r in routes])
        if not direct:
            return staged  # delivered at commit, once the relay said 250
        try:
            await self.commit(staged)
        except DeliveryFailed as exc:
            return exc.reply
        return RemoteStaged([], "")

    async def commit(self, staged: Staged) -> None:
        assert isinstance(staged, RemoteStaged)
        reply = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._deliver, staged.data, staged.mail_from, staged.recipients
        )
        if reply is not None:
            raise DeliveryFailed(reply)

    async def discard(self, staged: Staged) -> None:
        return None  # nothing was sent yet

    def _deliver(
        self, data: bytes | Spooled, mail_from: str, recipients: list[str]
    ) -> Reply | None:
        """None if Mailman took every copy, else the reply for the client."""
        try:
            with smtplib.LMTP(*self.lmtp, timeout=self.timeout) as lmtp:
                lmtp.ehlo_or_helo_if_needed()
                code, text = lmtp.mail(mail_from)
                if code != 250:
                    return as_reply(code, text.decode("utf-8", "replace"))
                verdicts = []
                accepted = 0
                for rcpt in recipients:
                    code, text = lmtp.rcpt(rcpt)
                    verdicts.append((code, text))
                    accepted += code in (250, 251)
                if accepted:
                    code, text = lmtp.docmd("DATA")
                    if code != 354:
                        return as_reply(code, text.decode("utf-8", "replace"))
                    if isinstance(data, Spooled):  # from the file, a block at a time
                        for block in data.stuffed():
                            lmtp.send(block)
                    else:
                        lmtp.send(dot_stuff(data))
                    # RFC 2033 4.2: one reply per accepted recipient, in order.
                    verdicts = [lmtp.getreply() for _ in range(accepted)] + [
                        v for v in verdicts if v[0] not in (250, 251)
                    ]
        except (OSError, smtplib.SMTPException) as exc:
            log.error("Mailman LMTP %s:%d: %s", *self.lmtp, exc)
            return LMTP_UNREACHABLE
        failed = [
            as_reply(code, text.decode("utf-8", "replace"))
            for code, text in verdicts
            if code >= 400
        ]
        if not failed:
            return None
        log.error(
            "Mailman LMTP refused %d of %d list copies: %s", len(failed), len(recipients), failed[0]
        )
        temporary = [r for r in failed if r.is_temporary]
        return temporary[0] if temporary else failed[0]
