"""``access``: allow or deny by client network, HELO, sender and recipient.

The tables mean what Postfix's access(5) tables mean: each is a list of
``[pattern, action]`` pairs, and the first pattern that matches decides.

Patterns: a network (``192.0.2.0/24``, ``2001:db8::/32``, an address) for
clients; a regular expression between slashes (``/^spam[0-9]+@/``,
case-insensitive as in Postfix's regexp tables) for any table; for
addresses, ``user@domain`` (that address), ``domain`` (the domain and, as
with parent_domain_matches_subdomains, its subdomains), ``user@`` (that
local part at any domain).

Actions: ``OK`` (accept: this plugin's later checks and the plugins after
it are skipped for the connection or transaction; the gateway's own
routing and relay control still apply), ``REJECT [text]`` (``554 5.7.1``),
``DEFER [text]`` (``450 4.7.1``), ``NNN [X.Y.Z] text`` (that reply),
``DUNNO`` (stop looking in this table, decide nothing).

Client rules are applied when the client connects (a refusal is the
greeting: ``554``, or ``421`` for DEFER); HELO rules at HELO/EHLO, sender
rules at MAIL, recipient rules at RCPT.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from mmgate.hooks import Outcome, accept, defer, reject
from mmgate.networks import Network, in_networks
from mmgate.smtp.events import Hello, MailFrom, RcptTo
from mmgate.smtp.replies import Reply

ACCESS_DENIED = Reply(554, "5.7.1", "Access denied")
ACCESS_DEFERRED = Reply(450, "4.7.1", "Try again later")
#: At connect time the greeting may only be 220, 554 or 421 (RFC 5321 3.1).
CONNECT_DEFERRED = Reply(421, "4.7.0", "Try again later")
_CODE = re.compile(r"([45][0-9][0-9])(?: ([45]\.[0-9]{1,3}\.[0-9]{1,3}))?(?: (.*))?$", re.S)


@dataclass(frozen=True)
class Rule:
    pattern: str
    action: str
    regex: re.Pattern[str] | None = None
    network: Network | None = None


def _rule(entry: Any, table: str, *, networks: bool) -> Rule:
    if (
        not isinstance(entry, list | tuple)
        or len(entry) != 2
        or not all(isinstance(x, str) for x in entry)
    ):
        raise ValueError(f"{table}: each rule is [pattern, action], not {entry!r}")
    pattern, action = entry[0].strip(), entry[1].strip()
    verb = action.split(" ", 1)[0].upper()
    if verb not in ("OK", "REJECT", "DEFER", "DUNNO") and not _CODE.match(action):
        raise ValueError(f"{table}: {pattern!r}: action must be OK, REJECT, DEFER, DUNNO or NNN")
    if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
        try:
            return Rule(pattern, action, regex=re.compile(pattern[1:-1], re.I))
        except re.error as exc:
            raise ValueError(f"{table}: {pattern!r}: bad regular expression: {exc}") from None
    if networks:
        try:
            return Rule(pattern, action, network=ipaddress.ip_network(pattern, strict=False))
        except ValueError:
            raise ValueError(f"{table}: {pattern!r} is not a network or /regex/") from None
    return Rule(pattern.lower(), action)


def _address_matches(rule: Rule, address: str) -> bool:
    key = rule.pattern
    address = address.lower()
    if key.endswith("@"):
        return address.startswith(key)
    if "@" in key:
        return address == key
    domain = address.rpartition("@")[2]
    return domain == key or domain.endswith("." + key)


class Access:
    """First match wins, per table, with Postfix access(5) meaning."""

    name = "access"

    def __init__(
        self,
        clients: list[Any] | None = None,
        helo: list[Any] | None = None,
        senders: list[Any] | None = None,
        recipients: list[Any] | None = None,
    ) -> None:
        self.clients = [_rule(e, "clients", networks=True) for e in clients or []]
        self.helo = [_rule(e, "helo", networks=False) for e in helo or []]
        self.senders = [_rule(e, "senders", networks=False) for e in senders or []]
        self.recipients = [_rule(e, "recipients", networks=False) for e in recipients or []]

    @staticmethod
    def _first(rules: list[Rule], value: str, *, address: bool) -> Rule | None:
        for rule in rules:
            if rule.regex is not None:
                hit = rule.regex.search(value) is not None
            elif rule.network is not None:
                hit = in_networks(value, (rule.network,))
            elif address:
                hit = _address_matches(rule, value)
            else:
                hit = value.lower() == rule.pattern
            if hit:
                return rule
        return None

    @staticmethod
    def _outcome(rule: Rule | None, default_defer: Reply = ACCESS_DEFERRED) -> Outcome | None:
        if rule is None:
            return None
        verb, _, text = rule.action.partition(" ")
        verb = verb.upper()
        text = text.strip()
        if verb == "OK":
            return accept()
        if verb == "DUNNO":
            return None
        if verb == "REJECT":
            return reject(ACCESS_DENIED.with_text(text) if text else ACCESS_DENIED)
        if verb == "DEFER":
            return defer(default_defer.with_text(text) if text else default_defer)
        m = _CODE.match(rule.action)
        assert m is not None  # checked when the rule was made
        status = m.group(2) or f"{m.group(1)[0]}.7.1"
        reply = Reply(int(m.group(1)), status, m.group(3) or "Access denied")
        return reject(reply) if reply.code >= 500 else defer(reply)

    def _decide(self, ctx: Any, rules: list[Rule], value: str, *, address: bool) -> Outcome | None:
        if ctx.notes.get("access_ok") or ctx.txn.get("access_ok"):
            return None
        outcome = self._outcome(self._first(rules, value, address=address))
        return outcome

    def hook_connect(self, ctx: Any) -> Outcome | None:
        outcome = self._outcome(self._first(self.clients, ctx.client_ip, address=False))
        if outcome is None:
            return None
        if outcome.action == "accept":
            ctx.notes["access_ok"] = True
            return outcome
        if outcome.action == "defer":
            return defer(CONNECT_DEFERRED)
        assert outcome.reply is not None
        return reject(outcome.reply.with_text(outcome.reply.text))

    def hook_helo(self, ctx: Any, hello: Hello) -> Outcome | None:
        return self._decide(ctx, self.helo, hello.name, address=False)

    def hook_mail(self, ctx: Any, mail: MailFrom) -> Outcome | None:
        outcome = self._decide(ctx, self.senders, mail.address, address=True)
        if outcome is not None and outcome.action == "accept":
            ctx.txn["access_ok"] = True
        return outcome

    def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> Outcome | None:
        return self._decide(ctx, self.recipients, rcpt.address, address=True)
