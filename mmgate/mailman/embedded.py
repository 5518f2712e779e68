"""The embedded default: a Mailman home that mmgate creates for itself.

With no configuration, ``mmgate serve`` creates ``VAR/mailman.cfg`` and a
Mailman var directory beside it on first start (SQLite, ``layout: local``,
``NullMTA`` so that no Postfix map is written), and uses that Mailman
in-process. Mailman's outgoing SMTP host is mmgate itself, so the copies
Mailman sends to members come back through the gateway. Its ``site_owner``
is ``postmaster@localhost``, which the gateway always delivers (into
``VAR/postmaster/``, or to ``[smtp] postmaster``), so Mailman's own
notices to the site owner can never loop or bounce. Mailman's own LMTP and
REST ports are free ones chosen when the home is made (never a clash with
another Mailman on the host); ``[mta] smtp_host``/``smtp_port`` are kept
equal to the gateway's listen address at each start. Two settings matter:
an absolute ``var_dir`` (Mailman's default layout puts its var directory
in ``$PWD/var``, wherever the command happens to run) and the null MTA
(the default Postfix hook runs postmap, and fails without Postfix).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

#: The first line of a home mmgate wrote: only such a file is kept in step.
MARK = "# Written by mmgate for its embedded Mailman"
TEMPLATE = """\
# Written by mmgate for its embedded Mailman.
# mmgate serve keeps [mta] smtp_host and smtp_port equal to its --listen
# address (Mailman's copies to members go out through the gateway), and the
# ports it is given by flags; edit anything else freely.
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now: Mailman's own ports for a new home, so
    that they never clash with another Mailman on the host."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def connect_host(listen_host: str) -> str:
    """Where a client on this host reaches a listener bound to ``listen_host``."""
    if listen_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


def ensure_home(
    var_dir: str | Path,
    *,
    smtp_host: str = "127.0.0.1",
    smtp_port: int = 8025,
    lmtp_port: int | None = None,
    rest_port: int | None = None,
    site_owner: str = "postmaster@localhost",
    extra: str = "",
) -> Path:
    """The path of the embedded ``mailman.cfg``, written if it is missing
    (Mailman's LMTP and REST ports free ones unless given). In a home that
    exists and that mmgate wrote, the outgoing host follows ``smtp_host``
    and ``smtp_port``, and the ports given are set."""
    var = Path(var_dir).resolve()
    cfg = var / "mailman.cfg"
    if cfg.exists():
        keep_in_step(
            cfg,
            {
                ("mta", "smtp_host"): smtp_host,
                ("mta", "smtp_port"): str(smtp_port),
                **({("mta", "lmtp_port"): str(lmtp_port)} if lmtp_port else {}),
                **({("webservice", "port"): str(rest_port)} if rest_port else {}),
            },
        )
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
            lmtp_port=lmtp_port or free_port(),
            rest_port=rest_port or free_port(),
            rest_pass=secrets.token_urlsafe(16),
        )
        + extra
    )
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return cfg


def keep_in_step(cfg: Path, values: dict[tuple[str, str], str]) -> bool:
    """Set ``(section, key)`` values in a mailman.cfg that mmgate wrote
    (whose first line is :data:`MARK`); a file someone else wrote is left
    alone. Written in place of the old file, atomically, still 0600.
    Returns whether anything changed."""
    text = cfg.read_text()
    if not text.startswith(MARK):
        return False
    lines, section, changed = text.splitlines(keepends=True), "", False
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        key, colon, _ = stripped.partition(":")
        value = values.get((section, key.strip())) if colon else None
        if value is not None and line != f"{key.strip()}: {value}\n":
            lines[n] = f"{key.strip()}: {value}\n"
            changed = True
    if changed:
        fd, tmp = tempfile.mkstemp(dir=cfg.parent, prefix=".mailman.cfg.")
        with os.fdopen(fd, "w") as f:  # mkstemp's file is 0600
            f.write("".join(lines))
        os.replace(tmp, cfg)
    return changed
