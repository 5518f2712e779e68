"""mmgate: an asyncio SMTP server with Python smtpd's API, and a gateway for GNU Mailman 3.

``from mmgate import SMTPServer, SMTPChannel, DebuggingServer, loop`` is the
one-line change that moves smtpd code onto mmgate.

The names are loaded on first use (PEP 562), so importing a part of the
package (the sans-I/O core ``mmgate.smtp``, the admin API) does not load the
asyncio server, and ``MailmanProxy`` (which loads Mailman, a third of a
second) is loaded only when asked for.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from mmgate._version import __version__

if os.environ.get("MMGATE_PURE_PYTHON"):
    from mmgate import _interpreted

    _interpreted.install()

if TYPE_CHECKING:
    from mmgate.channel import SMTPChannel
    from mmgate.debugging import DebuggingServer
    from mmgate.gateway import MailmanProxy
    from mmgate.proxy import PureProxy
    from mmgate.server import SMTPServer, loop

_WHERE = {
    "DebuggingServer": "mmgate.debugging",
    "MailmanProxy": "mmgate.gateway",
    "PureProxy": "mmgate.proxy",
    "SMTPChannel": "mmgate.channel",
    "SMTPServer": "mmgate.server",
    "loop": "mmgate.server",
}

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
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mmgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
