"""The embedded default: a Mailman home that mmgate creates for itself.

With no configuration, ``mmgate serve`` creates ``VAR/mailman.cfg`` and a
Mailman var directory beside it on first start (SQLite, ``layout: local``,
``NullMTA`` so that no Postfix map is written), and uses that Mailman
in-process. Mailman's outgoing SMTP host is mmgate itself, so the copies
Mailman sends to members come back through the gateway. Its ``site_owner``
is ``postmaster@localhost``, which the gateway always delivers (into
``VAR/postmaster/``, or to ``[smtp] postmaster``), so Mailman's own
notices to the site owner can never loop or bounce. Two settings matter:
an absolute ``var_dir`` (Mailman's default layout puts its var directory
in ``$PWD/var``, wherever the command happens to run) and the null MTA
(the default Postfix hook runs postmap, and fails without Postfix).
"""

from __future__ import annotations

import os
from pathlib import Path

TEMPLATE = """\
# Written by mmgate for its embedded Mailman; edit freely, it is not rewritten.
[mailman]
site_owner: {site_owner}
layout: local

[paths.local]
var_dir: {mailman_var}

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///{mailman_var}/data/mailman.db

[mta]
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
smtp_host: {smtp_host}
smtp_port: {smtp_port}
lmtp_host: 127.0.0.1
lmtp_port: {lmtp_port}

[webservice]
hostname: 127.0.0.1
port: {rest_port}
admin_user: restadmin
admin_pass: {rest_pass}
"""


#: Runner polling for a lab or a test: injection to delivery drops from
#: ~1.3 s to ~0.12 s, measured on this project's machines. Not for
#: production, where it only burns CPU.
FAST_RUNNERS = "".join(
    f"\n[runner.{name}]\nsleep_time: 0.1s\n"
    for name in ("in", "pipeline", "out", "command", "virgin", "bounces")
)


def ensure_home(
    var_dir: str | Path,
    *,
    smtp_host: str = "127.0.0.1",
    smtp_port: int = 8025,
    lmtp_port: int = 8024,
    rest_port: int = 8001,
    site_owner: str = "postmaster@localhost",
    extra: str = "",
) -> Path:
    """The path of the embedded ``mailman.cfg``, written if it is missing."""
    var = Path(var_dir).resolve()
    cfg = var / "mailman.cfg"
    if cfg.exists():
        return cfg
    # The var directory holds the store, Mailman's database and queues: its
    # owner's alone (0700); mailman.cfg holds the REST password (0600).
    if not var.exists():
        var.mkdir(mode=0o700, parents=True)
        var.chmod(0o700)  # mkdir's mode is filtered by the umask
    mailman_var = var / "mailman"
    (mailman_var / "data").mkdir(parents=True, exist_ok=True)
    import secrets

    text = (
        TEMPLATE.format(
            site_owner=site_owner,
            mailman_var=mailman_var,
            smtp_host=smtp_host,
            smtp_port=smtp_port,
            lmtp_port=lmtp_port,
            rest_port=rest_port,
            rest_pass=secrets.token_urlsafe(16),
        )
        + extra
    )
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return cfg
