"""The gateway in front of a Mailman on "another host": its REST API and its
LMTP runner, both Mailman's own, started as separate processes."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.mailman.backend import MailmanUnavailable
from mmgate.mailman.remote import RemoteMailman
from tests.harness import serving
from tests.mailman_env import MailmanEnv
from tests.upstream import free_port

POST = b"From: alice@example.org\r\nSubject: remote\r\nMessage-ID: <r-1@example.org>\r\n\r\nx\r\n"


@pytest.fixture(scope="module")
def rest(mailman_env: MailmanEnv) -> Iterator[str]:
    port = int(mailman_env.setting("port"))
    with mailman_env.runner("rest:0:1", port):
        yield f"http://127.0.0.1:{port}"


def remote(env: MailmanEnv, url: str, lmtp_port: int | None = None) -> RemoteMailman:
    return RemoteMailman(
        url,
        user="restadmin",
        password=env.setting("admin_pass"),
        lmtp=("127.0.0.1", lmtp_port or env.lmtp_port),
        timeout=5,
    )


def send(address: tuple[str, int], rcpts: list[str]) -> Any:
    with smtplib.SMTP(*address) as client:
        client.ehlo()
        client.mail("alice@example.org")
        verdicts = [client.rcpt(r)[0] for r in rcpts]
        if 250 not in verdicts:
            return verdicts, None
        return verdicts, client.data(POST)


def test_directory_comes_from_the_rest_api(mm: MailmanEnv, rest: str):
    snap = remote(mm, rest).start()
    assert snap.lists["test@example.com"] == "test.example.com"
    assert snap.aliases == {"alias.example": "example.com"}
    assert {"example.com", "lists.example.net"} <= snap.domains
    assert snap.verp_delimiter == "+" and snap.site_owner == "postmaster@localhost"


def test_list_mail_reaches_mailmans_queue_through_its_lmtp_runner(mm: MailmanEnv, rest: str):
    with mm.runner("lmtp:0:1", mm.lmtp_port):
        server = MailmanProxy(("127.0.0.1", 0), None, mailman=remote(mm, rest))
        with serving(server) as address:
            verdicts, (code, _) = send(
                address, ["test@alias.example", "test-request@example.com", "nolist@example.com"]
            )
        assert verdicts == [250, 250, 550] and code == 250
        mm.wait_for_queue(2)
    entries = mm.drain_all()
    ((_, post),) = entries["in"]
    ((_, request),) = entries["command"]
    assert post["listid"] == "test.example.com" and post["to_list"] is True
    assert request["subaddress"] == "request" and request["to_request"] is True


def test_lmtp_runner_down_is_451_after_data(mm: MailmanEnv, rest: str):
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=remote(mm, rest, free_port()))
    with serving(server) as address:
        verdicts, (code, text) = send(address, ["test@example.com"])
    assert verdicts == [250]
    assert (code, text) == (451, b"4.4.1 Mailman's LMTP runner is unreachable, try again later")


def test_unreachable_rest_api_stops_the_constructor(mm: MailmanEnv):
    with pytest.raises(MailmanUnavailable, match="REST API unreachable"):
        MailmanProxy(("127.0.0.1", 0), None, mailman=remote(mm, f"http://127.0.0.1:{free_port()}"))


def test_serve_refuses_to_start_when_the_rest_api_is_unreachable(tmp_path):
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmgate",
            "serve",
            "--mailman-url",
            f"http://127.0.0.1:{port}",
            "--mailman-lmtp",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"MMGATE_MAILMAN_PASSWORD": "x", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"mmgate: error: Mailman cannot be used: http://127.0.0.1:{port}: REST API unreachable:"
    )
    assert done.stderr.count("\n") == 1
