"""mmgate: an asyncio SMTP server with Python smtpd's API, and a gateway for GNU Mailman 3.

``from mmgate import SMTPServer, SMTPChannel, DebuggingServer, loop`` is the
one-line change that moves smtpd code onto mmgate.
"""

__version__ = "0.1.0"

from mmgate.channel import SMTPChannel
from mmgate.debugging import DebuggingServer
from mmgate.proxy import PureProxy
from mmgate.server import SMTPServer, loop

__all__ = [
    "DebuggingServer",
    "MailmanProxy",
    "PureProxy",
    "SMTPChannel",
    "SMTPServer",
    "__version__",
    "loop",
]


def __getattr__(name: str) -> object:
    # MailmanProxy imports Mailman (a third of a second): only when asked for.
    if name == "MailmanProxy":
        from mmgate.gateway import MailmanProxy

        return MailmanProxy
    raise AttributeError(f"module 'mmgate' has no attribute {name!r}")
