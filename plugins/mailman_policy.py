"""``mailman_policy``: what Mailman would decide anyway, said during the session.

A post that Mailman would reject is refused at the end of DATA, with
Mailman's own rejection text, so no rejection notice is ever mailed to a
(possibly forged) sender: no backscatter. Off unless configured.

How it knows: for each list the message is posted to, the list's own
posting chain (``mlist.posting_chain``, normally Mailman's
``default-posting-chain``) is walked with Mailman's own rules, in Mailman's
own order, exactly as ``mailman.core.chains.process`` walks it, but the
walk stops where a terminal chain (accept, hold, reject, discard) would
act, and the database transaction is rolled back, so nothing is held,
bounced, subscribed or recorded. The message is refused only when:

* every recipient of the transaction is a posting address of such a list
  (SMTP has one reply for the whole message, and a recipient Mailman would
  take must not lose its copy), and
* the walk ends in Mailman's ``reject`` chain for every one of them.

So a post is refused only where Mailman would reject it: a non-member post
to a list whose non-member action is *reject* (unless one of the senders
Mailman considers is a member or in ``accept_these_nonmembers``), a member
whose moderation action is *reject*, and whatever a site's own chain
rejects. A post over ``max_message_size`` is refused (``552 5.3.4``) only
when that chain rejects it; Mailman 3's built-in chain holds such posts,
so there it is taken and held, as Mailman would. Anything unexpected (an
error, a chain link that would run code) refuses nothing.

It needs Mailman in-process (the embedded or a local Mailman); with a
remote Mailman it has nothing to walk and refuses nothing (said once).
"""

from __future__ import annotations

import email
import logging
from contextlib import suppress
from typing import Any

from mmgate.hooks import Message, Outcome, reject
from mmgate.mailman.local import LocalMailman
from mmgate.mailman.routing import Route
from mmgate.smtp.replies import Reply

log = logging.getLogger("mmgate.plugins.mailman_policy")

REJECTED = Reply(550, "5.7.1", "")
TOO_BIG = Reply(552, "5.3.4", "")


def walk_posting_chain(list_id: str, data: bytes, mail_from: str) -> tuple[str, list[str], bool]:
    """Where the list's posting chain would send this post: the terminal
    chain's name (or "none"), Mailman's reasons, and whether max-size hit.

    Runs on Mailman's thread; every database change is rolled back.
    """
    from mailman.chains.base import TerminalChainBase
    from mailman.config import config
    from mailman.core.i18n import format_reasons
    from mailman.email.message import Message as MailmanMessage
    from mailman.interfaces.address import ExistingAddressError
    from mailman.interfaces.chain import LinkAction
    from mailman.interfaces.listmanager import IListManager
    from mailman.interfaces.usermanager import IUserManager
    from zope.component import getUtility

    try:
        mlist = getUtility(IListManager).get_by_list_id(list_id)
        if mlist is None:
            return "none", [], False
        msg = email.message_from_bytes(data, MailmanMessage)
        msg.set_unixfrom(mail_from)
        msg.original_size = len(data)
        msgdata: dict[str, Any] = {"listid": list_id, "to_list": True}
        users = getUtility(IUserManager)
        for sender in msg.senders:  # as the incoming runner does first
            with suppress(ExistingAddressError):
                users.create_address(sender)
        msgdata["rule_hits"] = hits = []
        msgdata["rule_misses"] = misses = []
        stack: list[tuple[Any, Any]] = []
        chain = config.chains[mlist.posting_chain]
        links = chain.get_links(mlist, msg, msgdata)
        while True:
            if isinstance(chain, TerminalChainBase):
                reasons = format_reasons(msgdata.get("moderation_reasons") or [])
                return chain.name, reasons, "max-size" in hits
            link = next(links, None)
            if link is None:
                if not stack:
                    return "none", [], False
                chain, links = stack.pop()
                continue
            if not link.rule.check(mlist, msg, msgdata):
                if link.rule.record:
                    misses.append(link.rule.name)
                continue
            if link.rule.record:
                hits.append(link.rule.name)
            if link.action is LinkAction.jump:
                chain = link.chain
                links = chain.get_links(mlist, msg, msgdata)
            elif link.action is LinkAction.detour:
                stack.append((chain, links))
                chain = link.chain
                links = chain.get_links(mlist, msg, msgdata)
            elif link.action is LinkAction.defer:
                continue
            else:  # stop, or a function to run: not ours to guess
                return "none", [], False
    finally:
        config.db.abort()


def rejection_text(display_name: str, reasons: list[str]) -> str:
    """Mailman's list:user:notice:rejected wording, as reply lines."""
    head = (
        f"Your message to the {display_name} mailing-list was rejected for the following reasons:"
    )
    return "\n".join([head, *(reasons or ["[No reasons given]"])])


class MailmanPolicy:
    name = "mailman_policy"

    def __init__(self) -> None:
        self.mailman: LocalMailman | None = None

    def attach(self, server: Any) -> None:
        mailman = getattr(server, "mailman", None)
        if isinstance(mailman, LocalMailman):
            self.mailman = mailman
        else:
            log.warning("mailman_policy needs Mailman in-process; it refuses nothing here")

    async def hook_data_post(self, ctx: Any, message: Message) -> Outcome | None:
        mailman = self.mailman
        routes: dict[str, Route] = ctx.txn.get("routes", {})
        if mailman is None or not routes:
            return None
        posts = [routes.get(r) for r in message.rcpt_tos]
        if not all(r is not None and r.subaddress is None for r in posts):
            return None  # a recipient Mailman takes whatever: never refuse its copy
        list_ids = sorted({r.list_id for r in posts if r is not None and r.list_id})
        data, sender = message.data, message.mail_from

        def walk() -> list[tuple[str, str, list[str], bool]]:
            from mailman.interfaces.listmanager import IListManager
            from zope.component import getUtility

            out = []
            for list_id in list_ids:
                where, reasons, too_big = walk_posting_chain(list_id, data, sender)
                mlist = getUtility(IListManager).get_by_list_id(list_id)
                name = mlist.display_name if mlist is not None else list_id
                out.append((where, name, reasons, too_big))
            return out

        try:
            verdicts = await mailman.call_async(walk)
        except Exception:
            log.exception("walking Mailman's posting chain failed; nothing refused")
            return None
        if not verdicts or any(where != "reject" for where, *_ in verdicts):
            return None
        _, name, reasons, too_big = verdicts[0]
        base = TOO_BIG if too_big else REJECTED
        log.info("post from <%s> refused as Mailman would reject it: %s", sender, reasons)
        return reject(base.with_text(rejection_text(name, reasons)))
