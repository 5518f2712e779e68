"""`mmgate debug`: every message shown with what Mailman would do with it."""

from __future__ import annotations

import io
import json
import mailbox
import queue
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mmgate.debug.server import DebugServer
from tests.harness import RawClient, serving
from tests.mailman_env import MailmanEnv
from tests.upstream import free_port


@contextmanager
def debug(mm: MailmanEnv, **kwargs: Any) -> Iterator[tuple[tuple[str, int], io.StringIO]]:
    out = io.StringIO()
    server = DebugServer(("127.0.0.1", 0), None, mailman=mm.mailman, out=out, **kwargs)
    with serving(server) as address:
        yield address, out


def raw_send(
    address: tuple[str, int], sender: str, rcpts: list[str], body: bytes, mail_params: str = ""
) -> int:
    with RawClient(address) as c:
        c.reply()
        c.cmd("EHLO debug.test")
        assert c.cmd(f"MAIL FROM:<{sender}>{mail_params}".encode())[0] == 250
        for r in rcpts:
            assert c.cmd(f"RCPT TO:<{r}>".encode())[0] == 250
        c.cmd("DATA")
        return c.cmd(body + b".")[0]


PLAIN = b"From: alice@example.org\r\nSubject: plain\r\n\r\nLine one.\r\nLine two.\r\n"


def test_plain_message_shows_envelope_routes_and_smtpd_format(mm):
    with debug(mm) as (address, out):
        assert (
            raw_send(
                address,
                "alice@example.org",
                ["test-request@example.com", "nolist@example.com", "bob@elsewhere.example"],
                PLAIN,
            )
            == 250
        )
    text = out.getvalue()
    assert "HELO:      debug.test (ESMTP)\nMAIL FROM: <alice@example.org>\n" in text
    assert (
        "<test-request@example.com>  list test.example.com, subaddress request, queue command"
        in text
    )
    assert (
        "<nolist@example.com>        reject 550 5.1.1 No such list or address here: "
        "nolist@example.com"
    ) in text
    assert (
        "<bob@elsewhere.example>     reject 451 4.3.5 Relaying is not configured here yet" in text
    )
    assert text.endswith(
        "---------- MESSAGE FOLLOWS ----------\nFrom: alice@example.org\nSubject: plain\n"
        "X-Peer: 127.0.0.1\n\nLine one.\nLine two.\n------------ END MESSAGE ------------\n"
    )
    assert not any(mm.drain_all().values())  # nothing injected outside the lab


MULTIPART = (
    b"From: alice@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
    b"--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="report.pdf"\r\n\r\n'
    + b"JVBERi0xLjQK" * 2000
    + b"\r\n--XX--\r\n"
)


def test_multipart_is_summarised_as_a_mime_tree_unless_full(mm):
    with debug(mm) as (address, out):
        raw_send(address, "alice@example.org", ["test@example.com"], MULTIPART)
    text = out.getvalue()
    assert "[multipart body summarised; --full shows it all]" in text
    assert "[MIME]\n- multipart/mixed\n  - text/plain  13 B\n" in text
    assert '  - application/pdf "report.pdf"  17.6 KiB (base64)' in text
    assert "JVBERi0xLjQK" not in text
    with debug(mm, full=True) as (address, out):
        raw_send(address, "alice@example.org", ["test@example.com"], MULTIPART)
    assert "JVBERi0xLjQK" in out.getvalue()


def test_long_body_is_cut_to_a_preview(mm):
    body = b"Subject: long\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(100))
    with debug(mm) as (address, out):
        raw_send(address, "alice@example.org", ["test@example.com"], body)
    text = out.getvalue()
    assert "line 9\n[... 90 more lines; --full shows all]" in text and "line 10\n" not in text


def test_8bit_and_smtputf8_messages_are_shown_as_text(mm):
    body = "From: jörg@bücher.example\r\nSubject: Grüße\r\n\r\nnaïve café\r\n".encode()
    with debug(mm) as (address, out):
        assert (
            raw_send(
                address,
                "jörg@bücher.example",
                ["test@example.com"],
                body,
                " BODY=8BITMIME SMTPUTF8",
            )
            == 250
        )
    text = out.getvalue()
    assert "MAIL FROM: <jörg@bücher.example> BODY=8BITMIME SMTPUTF8" in text
    assert "Subject: Grüße" in text and "naïve café" in text


def test_malformed_input_is_accepted_and_flagged(mm):
    body = b"Subject: broken\nno header separator here " + b"x" * 3000 + b"\n\xff\xfe garbage\r\n"
    with debug(mm) as (address, out):
        assert raw_send(address, "alice@example.org", ["test@example.com"], body) == 250
    text = out.getvalue()
    assert "Flags:     long lines (over 1000 octets); bare CR or LF line endings" in text
    assert "\ufffd\ufffd garbage" in text


def test_json_format_is_one_object_per_message(mm):
    with debug(mm, output_format="json") as (address, out):
        raw_send(
            address, "alice@example.org", ["test@example.com", "nolist@example.com"], MULTIPART
        )
        raw_send(address, "bob@example.org", ["test-join@example.com"], PLAIN)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["recipients"][0] == {
        "address": "test@example.com",
        "action": "list",
        "list_id": "test.example.com",
        "listname": "test@example.com",
        "subaddress": None,
        "queue": "in",
    }
    assert first["recipients"][1]["reply"]["code"] == 550
    assert [p["type"] for p in first["mime"]] == [
        "multipart/mixed",
        "text/plain",
        "application/pdf",
    ]
    assert first["subject"] == "report" and first["body_truncated"] is True
    assert second["number"] == 2 and second["recipients"][0]["subaddress"] == "join"


def test_maildir_and_mbox_keep_every_message(mm, tmp_path: Path):
    with debug(mm, maildir=tmp_path / "Maildir") as (address, _):
        raw_send(address, "alice@example.org", ["test@example.com"], PLAIN)
    (stored,) = list(mailbox.Maildir(str(tmp_path / "Maildir")))
    assert stored["Subject"] == "plain" and stored["Return-Path"] == "<alice@example.org>"
    with debug(mm, mbox=tmp_path / "mbox") as (address, _):
        raw_send(address, "alice@example.org", ["test@example.com"], PLAIN)
        raw_send(address, "bob@example.org", ["x@example.com"], PLAIN)
    box = mailbox.mbox(str(tmp_path / "mbox"))
    assert [m.get_from().split()[0] for m in box] == ["alice@example.org", "bob@example.org"]


def test_list_without_lab_is_a_one_line_error():
    done = subprocess.run(
        [sys.executable, "-m", "mmgate", "debug", "--list", "a@b.c"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (2, "mmgate: error: --list and --member need --lab\n")


# -- the lab ----------------------------------------------------------------


class LabProcess:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mmgate",
                "debug",
                "--lab",
                "--format",
                "json",
                "--list",
                "test@example.com",
                "--member",
                "alice@example.org",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--var-dir",
                str(tmp_path / "lab"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        self.records: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.err: list[str] = []
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.put(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any("debug server on" in line for line in self.err):
            assert self.proc.poll() is None, "".join(self.err)
            assert time.monotonic() < deadline, "lab not ready"
            time.sleep(0.2)

    def wait_for(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for record in self.seen:
            if predicate(record):
                return record
        while True:
            record = self.records.get(timeout=max(0.1, deadline - time.monotonic()))
            self.seen.append(record)
            if predicate(record):
                return record


def to(address: str) -> Any:
    return lambda r: any(x["address"] == address for x in r["recipients"])


@pytest.mark.one_loop
def test_lab_round_trip_with_mailmans_runners(tmp_path: Path):
    lab = LabProcess(tmp_path)
    try:
        lab.wait_ready()
        with smtplib.SMTP("127.0.0.1", lab.port) as client:
            client.sendmail(
                "alice@example.org",
                ["test@example.com"],
                b"From: alice@example.org\r\nTo: test@example.com\r\n"
                b"Subject: hello lab\r\n\r\nHi all.\r\n",
            )
            client.sendmail(
                "bob@example.org",
                ["test-request@example.com"],
                b"From: bob@example.org\r\nSubject: help\r\n\r\nhelp\r\n",
            )
            client.sendmail(
                "eve@example.org",
                ["test@example.com"],
                b"From: eve@example.org\r\nTo: test@example.com\r\n"
                b"Subject: not a member\r\n\r\nhi\r\n",
            )
        post = lab.wait_for(lambda r: r["mail_from"] == "alice@example.org")
        assert post["lab"].startswith("queued in Mailman")
        copy = lab.wait_for(lambda r: to("alice@example.org")(r) and "[Test]" in r["subject"])
        assert (
            copy["subject"] == "[Test] hello lab"
            and copy["mail_from"] == "test-bounces@example.com"
        )
        assert ["List-Id", "<test.example.com>"] in copy["headers"]
        reply = lab.wait_for(to("bob@example.org"))
        assert reply["subject"] == "The results of your email commands"
        notice = lab.wait_for(to("owner@example.org"))
        assert notice["subject"] == "test@example.com post from eve@example.org requires approval"
        assert lab.wait_for(to("eve@example.org"))["subject"].endswith("awaits moderator approval")
    finally:
        lab.proc.send_signal(signal.SIGINT)
        lab.proc.wait(60)
    assert lab.proc.returncode == 0, "".join(lab.err)
    pid_file = tmp_path / "lab" / "mailman" / "master.pid"
    master = int(pid_file.read_text()) if pid_file.exists() else None
    if master is not None:
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(master, 0)
