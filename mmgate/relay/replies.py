"""The replies of the relay path, each with its RFC 3463 enhanced status code.

They live beside the relay, not in the protocol core: the core knows SMTP,
not upstreams. Shapes and conventions are those of :mod:`mmgate.smtp.replies`.
"""

from __future__ import annotations

from mmgate.smtp.replies import Reply

#: Relaying is a privilege (RFC 5321 3.6.2); X.7.1 "Delivery not authorized".
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
RELAY_NOT_CONFIGURED = Reply(550, "5.7.1", "Relaying is not configured here")
#: The same for a trusted client (Mailman's own copies to members, on this
#: host): X.3.5 "System incorrectly configured", and temporary, so Mailman
#: keeps the copies and retries instead of counting a bounce per member.
RELAY_NOT_CONFIGURED_YET = Reply(
    451, "4.3.5", "Relaying is not configured here yet (mmgate serve --relay HOST:PORT)"
)
#: RFC 5321 3.6.1 / Postfix's allow_untrusted_routing: user%host@, host!user@
#: and "user@host"@ ask this server to route onwards; not for strangers.
SENDER_ROUTING = Reply(550, "5.7.1", "Sender-specified routing is not allowed here")
#: X.4.1 "No answer from host": the client should try again later.
UPSTREAM_UNREACHABLE = Reply(451, "4.4.1", "Upstream unreachable, try again later")
#: X.4.2 "Bad connection": dropped or timed out in the middle of a session.
UPSTREAM_LOST = Reply(451, "4.4.2", "Upstream connection lost, try again later")
UPSTREAM_TIMEOUT = Reply(451, "4.4.2", "Upstream timed out, try again later")
#: RFC 6152 3 / RFC 3463 X.6.3 "Conversion required but not supported".
NEEDS_8BITMIME = Reply(554, "5.6.3", "8-bit message but the upstream does not accept 8BITMIME")
#: RFC 6531 3.5: X.6.7 for an address or header that needs SMTPUTF8.
NEEDS_SMTPUTF8_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address but the upstream has no SMTPUTF8")
NEEDS_SMTPUTF8_HEADERS = Reply(554, "5.6.7", "Non-ASCII headers but the upstream has no SMTPUTF8")
#: RFC 3463 X.7.5 "Cryptographic failure": TLS with the upstream was
#: required (policy encrypt or verify) and failed; temporary, as Postfix.
UPSTREAM_TLS_FAILED = Reply(451, "4.7.5", "TLS with the upstream failed, try again later")
#: RFC 3030 3 / RFC 3463 X.6.3: a BINARYMIME message cannot go to an
#: upstream without BINARYMIME (mmgate does not convert it).
NEEDS_BINARYMIME = Reply(554, "5.6.3", "BINARYMIME message but the upstream does not accept it")
