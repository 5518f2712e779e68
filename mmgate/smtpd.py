"""``python -m mmgate.smtpd`` is ``python -m smtpd``: the same flags, on mmgate.

Also re-exports smtpd's names, so ``from mmgate import smtpd`` then
``smtpd.SMTPServer`` reads as old code did.
"""

from __future__ import annotations

import sys

from mmgate.channel import SMTPChannel
from mmgate.cli import UsageError, run_smtpd
from mmgate.config import ConfigError
from mmgate.debugging import DebuggingServer
from mmgate.proxy import PureProxy
from mmgate.runtime import LoopChoiceError
from mmgate.server import SMTPServer
from mmgate.smtp.limits import DATA_SIZE_DEFAULT

__all__ = [
    "DATA_SIZE_DEFAULT",
    "DebuggingServer",
    "PureProxy",
    "SMTPChannel",
    "SMTPServer",
    "main",
]


def main() -> int:
    try:
        return run_smtpd(sys.argv[1:], prog="python -m mmgate.smtpd")
    except (UsageError, LoopChoiceError, ConfigError) as exc:
        print(f"mmgate.smtpd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
