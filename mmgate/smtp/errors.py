"""Protocol errors carry the reply that tells the client what went wrong.

As in h11, an error raised by the core names its wire answer (here a reply
code plus an RFC 3463 enhanced status code), so the transport never has to
guess which code a failure deserves.
"""

from __future__ import annotations

from mmgate.smtp.replies import Reply


class ProtocolError(Exception):
    """The peer broke the protocol; ``reply`` is what to answer."""

    def __init__(self, reply: Reply, detail: str | None = None) -> None:
        super().__init__(detail or str(reply))
        self.reply = reply
