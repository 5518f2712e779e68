"""A classic smtpd program, as its users wrote them: an archive in SQLite.

    python -m tests.smtpd_archive PORT DATABASE

The sqlite3 connection is made in ``__init__`` and used in
``process_message``, which sqlite3 allows only on the thread that made it;
under smtpd that always held. Each call records its thread and checks that
no other call is running.
"""

from __future__ import annotations

import sqlite3
import sys
import threading

from mmgate import SMTPServer, loop


class Archive(SMTPServer):
    def __init__(self, localaddr, remoteaddr, database):  # type: ignore[no-untyped-def]
        SMTPServer.__init__(self, localaddr, remoteaddr)
        self.db = sqlite3.connect(database)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS archive (n INTEGER PRIMARY KEY, sender TEXT, "
            "size INTEGER, thread TEXT)"
        )
        self.busy = False

    def process_message(self, peer, mailfrom, rcpttos, data):  # type: ignore[no-untyped-def]
        if self.busy:
            return "451 overlapping call"
        self.busy = True
        try:
            self.db.execute(
                "INSERT INTO archive (sender, size, thread) VALUES (?, ?, ?)",
                (mailfrom, len(data), threading.current_thread().name),
            )
            self.db.commit()
        finally:
            self.busy = False


if __name__ == "__main__":
    Archive(("127.0.0.1", int(sys.argv[1])), None, sys.argv[2])
    print("READY", flush=True)
    loop()
