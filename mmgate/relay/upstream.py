"""The upstream side of relaying: pooled sessions and per-transaction state.

A client's transaction is mirrored upstream as it happens: MAIL when the
client's MAIL is accepted (or, for a gateway, at the first relayed RCPT),
each RCPT when the client sends it, DATA when the client's message is
complete. So every upstream verdict reaches the client at the command it
belongs to, and the client hears 250 after DATA only when the upstream said
250 to it. Anything that goes wrong with the connection itself is 451, so
the client keeps the message and retries: at least once, never at most once.

Sessions are pooled: EHLO is said once per connection, and a connection
left idle is reused for the next transaction. A pooled connection may have
died meanwhile (the upstream restarted); the first command on it then fails
before anything of the message was sent, and a fresh connection is tried.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass

import aiosmtplib
from aiosmtplib import SMTPResponse

from mmgate.relay import replies as relay_replies
from mmgate.smtp import replies
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled

log = logging.getLogger("mmgate.relay")

_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
#: What a command line may not carry (aiosmtplib's own check): a line break
#: or other control character would let an argument smuggle in a command.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
#: Failures of the connection, not verdicts of the upstream.
_LOST = (aiosmtplib.SMTPServerDisconnected, ConnectionError, OSError)
_TIMEOUT = (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)
#: Streamed message text waits while more than this is queued for the upstream.
_HIGH_WATER = 1024 * 1024


@dataclass(frozen=True)
class ClientTimeouts:
    """How long to wait for the upstream, in seconds (RFC 5321 4.5.3.2)."""

    connect: float = 30.0
    greeting: float = 300.0  #: 4.5.3.2.1 initial 220 message: 5 minutes
    mail: float = 300.0  #: 4.5.3.2.2 MAIL command: 5 minutes
    rcpt: float = 300.0  #: 4.5.3.2.3 RCPT command: 5 minutes
    data_end: float = 600.0  #: 4.5.3.2.6 DATA termination: 10 minutes

    @classmethod
    def uniform(cls, seconds: float) -> ClientTimeouts:
        return cls(seconds, seconds, seconds, seconds, seconds)


#: Postfix's smtp_tls_security_level names: ``none``, ``may`` (STARTTLS
#: when offered, plaintext if it fails), ``encrypt`` (TLS or nothing, the
#: certificate unchecked), ``verify`` (TLS with a certificate that a CA
#: vouches for and that names the upstream).
TLS_POLICIES = ("none", "may", "encrypt", "verify")


@dataclass(frozen=True)
class UpstreamTLS:
    """How the relay uses TLS with its upstream."""

    policy: str = "may"
    #: CA certificates (PEM) for ``verify``; None: the system's store
    ca_file: str | None = None
    #: the name the certificate must carry (``verify``); None: the upstream's host
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.policy not in TLS_POLICIES:
            raise ValueError(f"TLS policy must be one of {', '.join(TLS_POLICIES)}")

    def context(self) -> ssl.SSLContext:
        if self.policy == "verify":
            context = ssl.create_default_context(cafile=self.ca_file)
        else:  # encrypted, not authenticated (an MX's usual lot)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


class UpstreamTLSFailed(Exception):
    """TLS with the upstream was required and could not be had."""


def as_reply(code: int, message: str) -> Reply:
    """An upstream reply as ours, keeping its enhanced status code.

    When the upstream gave none, the class default (``x.0.0``) is used, so
    every reply mmgate sends carries one.
    """
    m = _STATUS.match(message)
    if m and m.group(1) == str(code)[0]:
        status, text = m.group(0).strip(), message[m.end() :]
    else:
        status, text = f"{str(code)[0]}.0.0", message
    # Continuation lines repeat the status (RFC 2034 section 3); ours is
    # written once per line by Reply.to_bytes, so drop theirs.
    lines = text.replace("\r", "").split("\n")
    rest = [line[m.end() :] if (m := _STATUS.match(line)) else line for line in lines[1:]]
    text = "\n".join([lines[0], *rest])
    text = text or "(no text)"
    if not 200 <= code <= 599:
        return relay_replies.UPSTREAM_LOST
    return Reply(code, status, text)


def _same_mailbox(address: str) -> str:
    """An address for duplicate checks: the domain is case-insensitive
    (RFC 5321 2.4), the local part is left as it is."""
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{domain.lower()}"


class Deadlines:
    """When each awaited upstream reply is due, checked by one watcher.

    RFC 5321's waits are minutes long (4.5.3.2), and a relayed message waits
    for three replies. ``asyncio.wait_for`` would make a timer, a future and
    two callbacks for each; here a command notes its deadline in a dict, and
    one task, alive only while some reply is awaited, looks every ``tick``
    and closes a session whose reply is overdue. Its command then fails as
    a timeout: at most one tick late, never early.
    """

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._due: dict[Connection, float] = {}
        self._watcher: asyncio.Task[None] | None = None

    def expect(self, conn: Connection, timeout: float) -> None:
        self._due[conn] = time.monotonic() + timeout
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())

    def answered(self, conn: Connection) -> None:
        self._due.pop(conn, None)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        try:
            while self._due:
                await asyncio.sleep(self.tick)
                now = time.monotonic()
                for conn, due in list(self._due.items()):
                    if now >= due:
                        del self._due[conn]
                        conn.timed_out = True
                        conn.close()  # the awaited reply fails: SMTPServerDisconnected
        finally:
            self._watcher = None


class Connection:
    """One upstream SMTP session, EHLO done."""

    __slots__ = ("deadlines", "dirty", "idle_since", "smtp", "timed_out")

    def __init__(self, smtp: aiosmtplib.SMTP, deadlines: Deadlines) -> None:
        self.smtp = smtp
        self.deadlines = deadlines
        self.dirty = False  # a transaction may be open: RSET before reuse
        self.idle_since = 0.0
        self.timed_out = False  # closed by the deadline watcher

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)

    async def command(self, *args: bytes, timeout: float) -> SMTPResponse:
        """One command and its reply, as aiosmtplib's ``execute_command``
        sends it, less the layers a transaction does not need here: a
        Connection serves one transaction at a time, so there is no other
        command to wait for (its lock), and no coroutine of its own between
        this one and the protocol's. Every command of a relayed message goes
        through here, three a message. The connection is closed, as
        aiosmtplib closes it, on a lost session, a timeout (the reply would
        pair with a later command) and 421."""
        line = b" ".join(args)
        if _CONTROL.search(line):
            raise ValueError("Command arg contains a prohibited control character")
        protocol = self.smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        protocol.write(line + b"\r\n")
        return await self.read_reply(timeout)

    async def read_reply(self, timeout: float) -> SMTPResponse:
        """The reply to what was written, within ``timeout`` seconds (see
        :class:`Deadlines`)."""
        protocol = self.smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        deadlines = self.deadlines
        deadlines.expect(self, timeout)
        try:
            response = await protocol.read_response(timeout=None)
        except aiosmtplib.SMTPServerDisconnected:
            self.close()
            if self.timed_out:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from None
            raise
        finally:
            deadlines.answered(self)
        if response.code == 421:
            self.close()
        return response

    @property
    def alive(self) -> bool:
        return self.smtp.is_connected

    def close(self) -> None:
        if self.smtp.is_connected:
            self.smtp.close()


class UpstreamPool:
    """Reusable sessions to one upstream (smtpd's ``remoteaddr``)."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        local_hostname: str,
        max_idle: int = 16,
        max_connections: int = 64,
        idle_timeout: float = 60.0,
        timeouts: ClientTimeouts | None = None,
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.address = address
        self.local_hostname = local_hostname
        self.tls = tls or UpstreamTLS()
        self._tls_context = self.tls.context() if self.tls.policy != "none" else None
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.timeouts = timeouts or ClientTimeouts()
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._deadlines = Deadlines(tick=min(1.0, *(t / 2 for t in astuple(self.timeouts))))
        self.connects = 0  # sessions opened, for tests and stats

    async def acquire(self) -> tuple[Connection, bool]:
        """A session with no open transaction, and whether it was pooled."""
        await self._slots.acquire()
        try:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if conn.alive and now - conn.idle_since < self.idle_timeout:
                    return conn, True
                conn.close()
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Connection, *, reusable: bool = True) -> None:
        self._slots.release()
        if reusable and conn.alive and len(self._idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self, *, plaintext: bool = False) -> Connection:
        host, port = self.address
        smtp = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname=self.local_hostname,
            timeout=self.timeouts.connect,
            start_tls=False,
        )
        await smtp.connect(timeout=self.timeouts.connect)
        try:
            await smtp.ehlo(timeout=self.timeouts.greeting)
        except aiosmtplib.SMTPHeloError:
            await smtp.helo(timeout=self.timeouts.greeting)
        self.connects += 1
        if self._tls_context is not None and not plaintext:
            try:
                await self._start_tls(smtp)
            except UpstreamTLSFailed as exc:
                smtp.close()
                if self.tls.policy != "may":
                    log.warning(
                        "upstream %s: %s (TLS policy %s)", self.address, exc, self.tls.policy
                    )
                    raise
                log.warning(
                    "upstream %s: %s; going on in plaintext (TLS policy may)", self.address, exc
                )
                return await self._connect(plaintext=True)
        return Connection(smtp, self._deadlines)

    async def _start_tls(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.supports_extension("starttls"):
            if self.tls.policy == "may":
                return  # nothing offered, nothing tried: plaintext, as Postfix's may
            raise UpstreamTLSFailed("no STARTTLS offered")
        try:
            await smtp.starttls(
                tls_context=self._tls_context,
                server_hostname=self.tls.server_name or self.address[0],
                timeout=self.timeouts.greeting,
            )
            await smtp.ehlo(timeout=self.timeouts.greeting)  # RFC 3207 4.2: anew
        except (ssl.SSLError, aiosmtplib.SMTPException, *_TIMEOUT, *_LOST) as exc:
            raise UpstreamTLSFailed(f"STARTTLS failed: {exc}") from None

    async def close(self) -> None:
        self._deadlines.stop()
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.smtp.quit(timeout=5)
            except Exception:  # the upstream may be gone: nothing to tell it
                conn.close()


class RelayTransaction:
    """The upstream half of one client transaction."""

    def __init__(
        self,
        pool: UpstreamPool,
        sender: str,
        *,
        body_8bit: bool,
        smtputf8: bool,
        dsn: list[str] | None = None,
        binary: bool = False,
    ) -> None:
        self.pool = pool
        self.sender = sender
        self.body_8bit = body_8bit
        self.smtputf8 = smtputf8
        #: RET= and ENVID= (RFC 3461), passed on when the upstream offers DSN
        self.dsn = dsn or []
        #: BODY=BINARYMIME (RFC 3030): only to an upstream with BINARYMIME
        self.binary = binary
        self.recipients: list[str] = []
        self._conn: Connection | None = None
        self._refused: Reply | None = None  # the upstream's verdict on MAIL
        #: Set when the session was lost after the upstream had accepted a
        #: recipient: that acceptance died with the session, so nothing more
        #: of this transaction may be acknowledged (every later RCPT and the
        #: DATA get this 4xx; the client retries the whole message).
        self.broken: Reply | None = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open(self) -> Reply | None:
        """Send MAIL upstream if not done yet: ``None``, or the client's reply."""
        if self._conn is not None:
            return None
        if self.broken is not None:
            return self.broken
        if self._refused is not None:
            return self._refused
        for attempt in (1, 2):
            try:
                conn, pooled = await self.pool.acquire()
            except UpstreamTLSFailed:
                return relay_replies.UPSTREAM_TLS_FAILED
            except _TIMEOUT:
                log.warning("upstream %s: timeout while connecting", self.pool.address)
                return relay_replies.UPSTREAM_UNREACHABLE
            except (aiosmtplib.SMTPException, *_LOST) as exc:
                log.warning("upstream %s unreachable: %s", self.pool.address, exc)
                return relay_replies.UPSTREAM_UNREACHABLE
            try:
                reply = await self._mail(conn)
            except _TIMEOUT:
                self.pool.release(conn, reusable=False)
                return relay_replies.UPSTREAM_TIMEOUT
            except (aiosmtplib.SMTPException, *_LOST) as exc:
                self.pool.release(conn, reusable=False)
                if pooled and attempt == 1:
                    continue  # a stale pooled session: nothing was sent, try a new one
                log.warning("upstream %s: lost at MAIL: %s", self.pool.address, exc)
                return relay_replies.UPSTREAM_LOST
            if reply is None:
                self._conn = conn
                return None
            if reply.code == 421:
                self.pool.release(conn, reusable=False)
                if pooled and attempt == 1:
                    continue
                return relay_replies.UPSTREAM_UNREACHABLE
            self.pool.release(conn)
            self._refused = reply
            return reply
        return relay_replies.UPSTREAM_LOST  # pragma: no cover - the loop returns

    async def _mail(self, conn: Connection) -> Reply | None:
        """MAIL upstream: None when it was taken, else the client's reply."""
        if conn.dirty:
            await conn.command(b"RSET", timeout=self.pool.timeouts.mail)
            conn.dirty = False
        if self.smtputf8 and not conn.supports("smtputf8") and not self.sender.isascii():
            return relay_replies.NEEDS_SMTPUTF8_ADDRESS
        args = [b"FROM:<" + self.sender.encode("utf-8") + b">"]
        if self.binary:
            if not (conn.supports("binarymime") and conn.supports("chunking")):
                return relay_replies.NEEDS_BINARYMIME
            args.append(b"BODY=BINARYMIME")
        elif self.body_8bit and conn.supports("8bitmime"):
            args.append(b"BODY=8BITMIME")
        if self.smtputf8 and conn.supports("smtputf8"):
            args.append(b"SMTPUTF8")
        if self.dsn and conn.supports("dsn"):
            args += [p.encode("ascii") for p in self.dsn]
        response = await conn.command(b"MAIL", *args, timeout=self.pool.timeouts.mail)
        if 200 <= response.code < 300:
            conn.dirty = True
            return None  # (our own 250 answers the client)
        return as_reply(response.code, response.message)

    async def rcpt(self, address: str, dsn: list[str] | None = None) -> Reply:
        """Forward one RCPT (with its NOTIFY= and ORCPT=, RFC 3461, when the
        upstream offers DSN); the reply is the upstream's verdict. A
        recipient the upstream already took in this transaction is not sent
        again, so the message reaches it once."""
        if _same_mailbox(address) in {_same_mailbox(r) for r in self.recipients}:
            return replies.RECIPIENT_OK
        failure = await self.open()
        if failure is not None:
            return failure
        conn = self._conn
        assert conn is not None
        if not address.isascii() and not conn.supports("smtputf8"):
            return relay_replies.NEEDS_SMTPUTF8_ADDRESS
        try:
            params = [p.encode("ascii") for p in dsn or []] if conn.supports("dsn") else []
            response: SMTPResponse = await conn.command(
                b"RCPT",
                b"TO:<" + address.encode("utf-8") + b">",
                *params,
                timeout=self.pool.timeouts.rcpt,
            )
        except (*_TIMEOUT, aiosmtplib.SMTPException, *_LOST) as exc:
            return self._broken(exc, "RCPT")
        if response.code == 421:
            self._drop(relay_replies.UPSTREAM_LOST)
            return relay_replies.UPSTREAM_LOST
        if response.code in (250, 251):
            self.recipients.append(address)
            return replies.RECIPIENT_OK
        return as_reply(response.code, response.message)

    async def data(self, message: bytes | Spooled) -> Reply:
        """Send the message (CRLF lines); the reply is the upstream's. A
        spooled one is streamed from its file, never read whole."""
        if self.broken is not None:
            return self.broken
        conn = self._conn
        if conn is None or not self.recipients:
            return replies.NEED_RCPT
        if not conn.supports("8bitmime") and not (
            message.is_ascii() if isinstance(message, Spooled) else message.isascii()
        ):
            return relay_replies.NEEDS_8BITMIME
        if self.smtputf8 and not conn.supports("smtputf8"):
            if isinstance(message, Spooled):
                head = message.header_block()
            else:
                end = message.find(b"\r\n\r\n")
                head = message[: end if end >= 0 else len(message)]
            if not head.isascii():
                return relay_replies.NEEDS_SMTPUTF8_HEADERS
        try:
            if conn.supports("chunking"):
                response = await self._bdat(conn, message)
            elif isinstance(message, Spooled):
                response = await self._stream(conn, message)
            else:
                response = await conn.smtp.data(message, timeout=self.pool.timeouts.data_end)
        except aiosmtplib.SMTPDataError as exc:
            return as_reply(exc.code, exc.message)
        except (*_TIMEOUT, aiosmtplib.SMTPException, *_LOST) as exc:
            return self._broken(exc, "DATA")
        conn.dirty = False
        self.release()
        return as_reply(response.code, response.message)

    async def _stream(self, conn: Connection, message: Spooled) -> SMTPResponse:
        """DATA from the spool file a block at a time, dot-stuffed on the way,
        writing no faster than the upstream reads (RFC 5321 4.5.3.2.5-6)."""
        start = await conn.command(b"DATA", timeout=self.pool.timeouts.mail)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        return await self._send(conn, message.stuffed())

    async def _bdat(self, conn: Connection, message: bytes | Spooled) -> SMTPResponse:
        """The message as one BDAT LAST chunk (RFC 3030), raw: no
        dot-stuffing, the octets exactly as they are; a spooled one streamed.
        A message held in memory (small: larger ones are spooled) leaves in
        the same write as its BDAT line, one system call rather than two."""
        if not isinstance(message, Spooled):
            return await self._send(conn, iter((b"BDAT %d LAST\r\n" % len(message) + message,)))
        command = b"BDAT %d LAST\r\n" % message.size
        return await self._send(conn, itertools.chain((command,), message.blocks()))

    async def _send(self, conn: Connection, blocks: Iterator[bytes]) -> SMTPResponse:
        """Write ``blocks`` no faster than the upstream reads, then its reply."""
        protocol = conn.smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        for block in blocks:
            protocol.write(block)
            transport = protocol.transport
            while (
                isinstance(transport, asyncio.WriteTransport)
                and not transport.is_closing()
                and transport.get_write_buffer_size() > _HIGH_WATER
            ):
                await asyncio.sleep(0.002)
        return await conn.read_reply(self.pool.timeouts.data_end)

    def _broken(self, exc: BaseException, command: str) -> Reply:
        """The session failed at ``command``: drop it; 451 so the client retries."""
        if isinstance(exc, _TIMEOUT):
            reply = relay_replies.UPSTREAM_TIMEOUT
        else:
            log.warning("upstream %s: lost at %s: %s", self.pool.address, command, exc)
            reply = relay_replies.UPSTREAM_LOST
        self._drop(reply)
        return reply

    def _drop(self, reply: Reply) -> None:
        """Forget a failed session. Recipients the upstream had accepted on it
        are gone with it, so the transaction is broken from here on."""
        if self._conn is not None:
            self.pool.release(self._conn, reusable=False)
            self._conn = None
        if self.recipients:
            self.broken = reply

    def release(self) -> None:
        """End the upstream side; the session goes back to the pool."""
        if self._conn is not None:
            self.pool.release(self._conn)
            self._conn = None
