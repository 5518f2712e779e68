"""DebuggingServer: prints every message instead of delivering it.

The format inside the ``MESSAGE FOLLOWS``/``END MESSAGE`` markers is exactly
smtpd's, so scripts that parsed it keep working; the envelope is printed
before the opening marker, where smtpd printed nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from mmgate.server import ProcessResult, SMTPServer
from mmgate.smtp.framing import BareLinePolicy
from mmgate.smtp.limits import Limits


class DebuggingServer(SMTPServer):
    """Discards messages and prints them on stdout.

    Lenient by default about long lines and bare LF, because test suites
    send such mail and want to see it, not a refusal.
    """

    #: Print ``Envelope from:``/``Envelope to:`` before each message.
    print_envelope = True

    def __init__(
        self,
        localaddr: tuple[str, int],
        remoteaddr: tuple[str, int] | None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("limits", Limits(lenient_text_lines=True))
        kwargs.setdefault("bare_lines", BareLinePolicy.LENIENT)
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    def _print_message_content(self, peer: Any, data: bytes | str) -> None:
        inheaders = True
        for line in data.splitlines():
            if inheaders and not line:
                peerheader = "X-Peer: " + str(peer[0])
                print(peerheader if isinstance(data, str) else repr(peerheader.encode("utf-8")))
                inheaders = False
            print(line if isinstance(line, str) else repr(line))

    async def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> ProcessResult:
        if self.print_envelope:
            print(f"Envelope from: {mailfrom or '<>'}")
            print(f"Envelope to: {', '.join(rcpttos)}")
        print("---------- MESSAGE FOLLOWS ----------")
        if kwargs.get("mail_options"):
            print(f"mail options: {kwargs['mail_options']}")
        if kwargs.get("rcpt_options"):
            print(f"rcpt options: {kwargs['rcpt_options']}\n")
        self._print_message_content(peer, data)
        print("------------ END MESSAGE ------------")
        sys.stdout.flush()
        return None
