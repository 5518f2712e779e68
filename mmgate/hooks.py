"""Hooks: how policy is added to a session, in the manner of Haraka.

A plugin is any object with some of these methods (each may be a plain
function or ``async def``)::

    hook_connect(ctx)                  a client connected; before the greeting
    hook_helo(ctx, hello)              HELO/EHLO (mmgate.smtp.events.Hello)
    hook_mail(ctx, mail)               MAIL FROM (MailFrom: address, params)
    hook_rcpt(ctx, rcpt)               RCPT TO (RcptTo: address, params)
    hook_data(ctx, headers)            the message's header block is known
    hook_data_post(ctx, message)       the whole message (Message, editable)
    hook_queue(ctx, message)           delivery: accept() means "I took it"
    hook_disconnect(ctx)               the client is gone (the result is ignored)
    hook_reset(ctx)                    the transaction was cleared (ignored too)

``ctx`` is the session (the :class:`~mmgate.channel.SMTPChannel`):
``ctx.client_ip``, ``ctx.seen_greeting``, ``ctx.mailfrom``, ``ctx.rcpttos``,
``ctx.notes`` (kept for the connection) and ``ctx.txn`` (cleared with each
transaction).

A hook returns ``None`` to let the next one decide, or an :class:`Outcome`:
:func:`accept`, :func:`reject` (5xx) or :func:`defer` (4xx). The first
outcome ends the plugins' say. A hook that raises, or returns anything
else, gives ``451 4.3.0`` for that step and a log line: a broken plugin
never crashes a session and never lets mail through by mistake.

After the plugins, the server's own steps run (``final`` hooks: the
router and the relay of MailmanProxy and PureProxy); a plugin's accept ends
the policy checks but never skips them, so a recipient is always routed.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, TypeGuard

from mmgate.smtp import replies
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled

log = logging.getLogger("mmgate.hooks")

HOOKS = (
    "connect",
    "helo",
    "mail",
    "rcpt",
    "data",
    "data_post",
    "queue",
    "disconnect",
    "reset",
)

#: What a plugin's rejection says when it gives no reply of its own.
REJECTED = Reply(550, "5.7.1", "Rejected by policy")
DEFERRED = Reply(450, "4.7.1", "Deferred by policy, try again later")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A hook's verdict: ``accept``, ``reject`` or ``defer``, with its reply."""

    action: str
    reply: Reply | None = None

    @property
    def refused(self) -> bool:
        return self.action != "accept"


def _as_reply(reply: Reply | str, default: Reply) -> Reply:
    if isinstance(reply, Reply):
        return reply
    return Reply.parse(reply, default_status=default.status)


def accept(reply: Reply | str | None = None) -> Outcome:
    """Take it; ``reply`` replaces the default success reply."""
    return Outcome("accept", None if reply is None else _as_reply(reply, replies.OK))


def reject(reply: Reply | str = REJECTED) -> Outcome:
    """Refuse for good (a 5xx reply)."""
    return Outcome("reject", _as_reply(reply, REJECTED))


def defer(reply: Reply | str = DEFERRED) -> Outcome:
    """Refuse for now (a 4xx reply): the client tries again later."""
    return Outcome("defer", _as_reply(reply, DEFERRED))


class Message:
    """The message as ``data_post`` and ``queue`` hooks see it.

    ``data`` is the wire form (CRLF lines, dot-unstuffed). Headers may be
    added or removed; the change reaches delivery. A large message stays in
    its spool file until a hook reads ``data``; the header work does not
    load it.
    """

    __slots__ = ("_data", "_spooled", "mail_from", "rcpt_tos")

    def __init__(self, mail_from: str, rcpt_tos: list[str], data: bytes | Spooled) -> None:
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self._data = data if isinstance(data, bytes) else b""
        self._spooled = data if isinstance(data, Spooled) else None

    @property
    def data(self) -> bytes:
        if self._spooled is not None:
            self._data, self._spooled = self._spooled.read(), None
        return self._data

    @data.setter
    def data(self, data: bytes) -> None:
        self._data, self._spooled = data, None

    @property
    def source(self) -> bytes | Spooled:
        """What delivery reads: the bytes, or the spool with its new head."""
        return self._spooled if self._spooled is not None else self._data

    @property
    def header_block(self) -> bytes:
        if self._spooled is not None:
            return self._spooled.header_block()
        end = self._data.find(b"\r\n\r\n")
        return self._data if end < 0 else self._data[: end + 2]

    @property
    def headers(self) -> EmailMessage:
        return header_fields(self.header_block)

    def add_header(self, name: str, value: str) -> None:
        """Put ``Name: value`` at the top, as trace headers go (RFC 5322 3.6)."""
        line = f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        if self._spooled is not None:
            self._spooled = self._spooled.with_head(line)
        else:
            self._data = line + self._data

    def remove_header(self, name: str) -> int:
        """Remove every field called ``name`` (with its folded lines); how many."""
        block = self.header_block
        wanted = name.lower().encode() + b":"
        kept: list[bytes] = []
        removed = 0
        skipping = False
        for line in block.splitlines(keepends=True):
            if line[:1] in (b" ", b"\t"):  # a folded line belongs to the field above
                if not skipping:
                    kept.append(line)
                continue
            skipping = line.lower().startswith(wanted)
            removed += skipping
            if not skipping:
                kept.append(line)
        new_block = b"".join(kept)
        if self._spooled is None:
            self._data = new_block + self._data[len(block) :]
        else:
            spooled = self._spooled
            head = spooled.head
            if len(block) <= len(head):  # the header ends inside what is in memory
                self._spooled = Spooled(
                    new_block + head[len(block) :], spooled.spool, spooled.offset
                )
            else:
                from_file = len(block) - len(head)
                self._spooled = Spooled(new_block, spooled.spool, spooled.offset + from_file)
        return removed


def header_fields(block: bytes) -> EmailMessage:
    """Parse a header block (only the headers: cheap even for a big message)."""
    return BytesHeaderParser(policy=compat32).parsebytes(block)


@dataclass(frozen=True, slots=True)
class _Hook:
    name: str
    fn: Callable[..., Any]
    owner: str
    final: bool


HookResult = Outcome | None | Awaitable[Outcome | None]


def pending(result: object) -> TypeGuard[Awaitable[Any]]:
    """Whether a hook's result is still to be awaited. None and an Outcome,
    the usual answers, are told apart first: ``inspect.isawaitable`` is an
    ABC check, and this runs at every command of every session."""
    return result is not None and type(result) is not Outcome and inspect.isawaitable(result)


class HookChain:
    """The plugins' hooks in order, then the server's own (``final``) steps."""

    def __init__(self, plugins: Sequence[object] = (), finals: Sequence[object] = ()) -> None:
        self.plugins = list(plugins)
        self.finals = list(finals)
        self._table: dict[str, list[_Hook]] = {}
        for obj, final in [*((p, False) for p in plugins), *((f, True) for f in finals)]:
            owner = getattr(obj, "name", None) or type(obj).__name__
            for name in HOOKS:
                fn = getattr(obj, "hook_" + name, None)
                if fn is not None:
                    self._table.setdefault(name, []).append(_Hook(name, fn, str(owner), final))
        self._on_message = any(n in self._table for n in ("data", "data_post", "queue"))

    def has(self, name: str) -> bool:
        return name in self._table

    @property
    def on_message(self) -> bool:
        """Has any hook for the message itself (data, data_post, queue)?"""
        return self._on_message

    def describe(self) -> list[tuple[str, list[str]]]:
        """Each plugin's name and the hooks it has, in order (``mmgate plugins``)."""
        out = []
        for obj in self.plugins:
            owner = getattr(obj, "name", None) or type(obj).__name__
            out.append((str(owner), [n for n in HOOKS if hasattr(obj, "hook_" + n)]))
        return out

    def run(self, name: str, ctx: Any, *args: Any) -> HookResult:
        """The verdict of hook ``name``: an Outcome, None (nobody objected), or
        an awaitable of one of those when a hook turned out to be async. Sync
        hooks cost no task and no coroutine."""
        hooks = self._table.get(name)
        if not hooks:
            return None
        return self._run_from(hooks, 0, ctx, args, None)

    def _run_from(
        self, hooks: list[_Hook], i: int, ctx: Any, args: tuple[Any, ...], accepted: Outcome | None
    ) -> HookResult:
        while i < len(hooks):
            hook = hooks[i]
            i += 1
            if accepted is not None and not hook.final:
                continue
            try:
                result = hook.fn(ctx, *args)
            except Exception:
                return self._failed(hook)
            if pending(result):
                return self._await_from(result, hook, hooks, i, ctx, args, accepted)
            outcome = self._checked(hook, result)
            if outcome is None:
                continue
            if outcome.action == "accept" and not hook.final:
                accepted = outcome
                continue
            return outcome
        return accepted

    async def _await_from(
        self,
        pending: Awaitable[Any],
        hook: _Hook,
        hooks: list[_Hook],
        i: int,
        ctx: Any,
        args: tuple[Any, ...],
        accepted: Outcome | None,
    ) -> Outcome | None:
        try:
            result = await pending
        except Exception:
            return self._failed(hook)
        outcome = self._checked(hook, result)
        if outcome is not None:
            if outcome.action != "accept" or hook.final:
                return outcome
            accepted = outcome
        rest = self._run_from(hooks, i, ctx, args, accepted)
        if inspect.isawaitable(rest):
            return await rest
        return rest

    @staticmethod
    def _failed(hook: _Hook) -> Outcome:
        log.exception("plugin %s: hook_%s failed; answered 451", hook.owner, hook.name)
        return Outcome("defer", replies.LOCAL_ERROR)

    @staticmethod
    def _checked(hook: _Hook, result: object) -> Outcome | None:
        if result is None:
            return None
        if isinstance(result, Outcome):
            reply = result.reply
            fits = {
                "accept": reply is None or reply.is_success,
                "reject": reply is None or reply.code >= 500,
                "defer": reply is None or reply.is_temporary,
            }
            if fits.get(result.action, False):
                return result
        log.error(
            "plugin %s: hook_%s returned %r, not None or an Outcome of the right class; "
            "answered 451",
            hook.owner,
            hook.name,
            result,
        )
        return Outcome("defer", replies.LOCAL_ERROR)
