"""SMTPServer and SMTPChannel as code uses them: hooks, subclasses, limits."""

from __future__ import annotations

import asyncio
import select
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mmgate import SMTPChannel, SMTPServer, runtime
from mmgate.smtp import replies
from tests.harness import RawClient, Recorder, serving
from tests.upstream import free_port


def transaction(
    c: RawClient, body: bytes = b"Subject: x\r\n\r\nhi", sender: str = "a@example.com"
) -> tuple[int, str]:
    assert c.cmd("EHLO example")[0] == 250
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    return c.cmd(body + b"\r\n.")


def test_base_process_message_raises_not_implemented_and_client_gets_451():
    server = SMTPServer(("127.0.0.1", 0), None)
    with pytest.raises(NotImplementedError):
        server.process_message(("127.0.0.1", 1), "a@b", ["c@d"], b"")
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert transaction(c) == (451, "4.3.0 Error: local error in processing")
        assert c.cmd("NOOP")[0] == 250  # the session goes on


class _Sync(SMTPServer):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.seen: list[tuple[Any, ...]] = []

    def process_message(self, peer, mailfrom, rcpttos, data):  # smtpd-era signature
        if mailfrom.startswith("slow"):
            time.sleep(1.0)
        if mailfrom.startswith("bad"):
            return 42
        self.seen.append((mailfrom, rcpttos, data, threading.current_thread().name))
        return None

    async def start(self) -> None:
        self.loop_thread = threading.current_thread().name
        await super().start()


def test_smtpd_era_process_message_without_kwargs_still_works():
    server = _Sync(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert transaction(c)[0] == 250
    assert server.seen[0][:3] == ("a@example.com", ["b@example.com"], b"Subject: x\n\nhi")


def test_sync_process_message_runs_on_the_loop_thread_one_call_at_a_time():
    server = _Sync(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as slow, RawClient(address) as fast:
        slow.reply()
        fast.reply()
        for line in ("EHLO a", "MAIL FROM:<slow@example.com>", "RCPT TO:<b@example.com>", "DATA"):
            slow.cmd(line)
        slow.send(b"x\r\n.\r\n")  # process_message now sleeps for a second
        time.sleep(0.1)
        started = time.monotonic()
        assert fast.cmd("NOOP")[0] == 250  # waits, as under smtpd's single thread
        assert time.monotonic() - started > 0.5
        assert slow.reply()[0] == 250
    assert server.seen[0][3] == server.loop_thread


def test_sync_process_message_on_its_own_thread_leaves_other_sessions_going():
    server = _Sync(("127.0.0.1", 0), None)
    server.sync_process_message = "thread"
    with serving(server) as address, RawClient(address) as slow, RawClient(address) as fast:
        slow.reply()
        fast.reply()
        for line in ("EHLO a", "MAIL FROM:<slow@example.com>", "RCPT TO:<b@example.com>", "DATA"):
            slow.cmd(line)
        slow.send(b"x\r\n.\r\n")
        time.sleep(0.1)
        started = time.monotonic()
        assert fast.cmd("NOOP")[0] == 250
        assert time.monotonic() - started < 0.5
        assert slow.reply()[0] == 250
    assert server.seen[0][3].startswith("process_message")


def test_bad_return_value_is_451_and_logged(caplog):
    with serving(_Sync(("127.0.0.1", 0), None)) as address, RawClient(address) as c:
        c.reply()
        assert transaction(c, sender="bad@example.com")[0] == 451
    assert "returned 42" in caplog.text


def test_process_message_gets_mail_and_rcpt_options():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO a")
        assert c.cmd("MAIL FROM:<a@example.com> size=10 BODY=8BITMIME")[0] == 250
        c.cmd("RCPT TO:<b@example.com>")
        c.cmd("DATA")
        c.cmd(b"x\r\n.")
    got = server.messages[0]
    assert got["mail_options"] == ["SIZE=10", "BODY=8BITMIME"]
    assert got["rcpt_options"] == []


class _NoDelayChannel(SMTPChannel):
    writes = 0

    def smtp_XNODELAY(self, arg):
        value = self.conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.push(f"250 2.0.0 nodelay={value} peer={self.peer[0]} greeting={self.seen_greeting}")

    def send_bytes(self, data):
        type(self).writes += 1
        super().send_bytes(data)


class _CustomServer(Recorder):
    channel_class = _NoDelayChannel


def test_subclass_adds_a_command_and_sockets_have_nodelay():
    with serving(_CustomServer(("127.0.0.1", 0), None)) as address, RawClient(address) as c:
        c.reply()
        c.cmd("HELO client.example")
        assert c.cmd("XNODELAY") == (250, "2.0.0 nodelay=1 peer=127.0.0.1 greeting=client.example")


class _WaitingChannel(SMTPChannel):
    """Commands whose reply comes from elsewhere, through ``wait_for``."""

    def smtp_XLATER(self, arg):
        async def verdict() -> None:
            await asyncio.sleep(0.05)
            self.push(f"250 2.0.0 later {arg}")

        self.wait_for(verdict())

    def smtp_XFAIL(self, arg):
        async def verdict() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("the verdict's source broke")

        self.wait_for(verdict())


class _WaitingServer(Recorder):
    channel_class = _WaitingChannel


def test_commands_pipelined_behind_a_wait_are_answered_after_it_and_a_failed_wait_is_451():
    with serving(_WaitingServer(("127.0.0.1", 0), None)) as address, RawClient(address) as c:
        c.reply()
        c.send(b"XLATER one\r\nNOOP\r\nXLATER two\r\nXFAIL\r\nNOOP\r\n")
        assert [c.reply() for _ in range(5)] == [
            (250, "2.0.0 later one"),
            (250, "2.0.0 OK"),
            (250, "2.0.0 later two"),
            (451, "4.3.0 Error: local error in processing"),
            (250, "2.0.0 OK"),
        ]


class _KeepsItsOwnState(SMTPChannel):
    """An smtpd-style subclass: attributes of its own, set in __init__."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = 0

    def smtp_XSEEN(self, arg):
        self.seen += 1
        self.notes.setdefault("args", []).append(arg)
        self.push(f"250 2.0.0 seen={self.seen} lines={self.received_lines} notes={self.notes}")


class _StatefulServer(Recorder):
    channel_class = _KeepsItsOwnState


def test_a_channel_subclass_keeps_attributes_of_its_own_and_sees_smtpds_received_lines():
    with serving(_StatefulServer(("127.0.0.1", 0), None)) as address, RawClient(address) as c:
        c.reply()
        assert c.cmd("XSEEN one") == (
            250,
            "2.0.0 seen=1 lines=['XSEEN one'] notes={'args': ['one']}",
        )
        assert c.cmd("XSEEN two") == (
            250,
            "2.0.0 seen=2 lines=['XSEEN two'] notes={'args': ['one', 'two']}",
        )


def test_pipelined_batch_is_answered_in_order_in_one_write():
    with serving(_CustomServer(("127.0.0.1", 0), None)) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO a")
        before = _NoDelayChannel.writes
        c.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<bad address>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
        )
        codes = [c.reply()[0] for _ in range(5)]
        assert codes == [250, 250, 501, 250, 354]
        assert _NoDelayChannel.writes - before == 1


def test_port_in_use_raises_at_construction():
    first = Recorder(("127.0.0.1", 0), None)
    with pytest.raises(OSError):
        Recorder(first.address, None)


def test_async_context_manager_serves_then_refuses():
    import asyncio

    async def main() -> tuple[int, bool]:
        server = Recorder(("127.0.0.1", 0), None)
        async with server:
            reader, writer = await asyncio.open_connection(*server.address)
            greeting = await reader.readline()
            writer.write(b"QUIT\r\n")
            await reader.readline()
            writer.close()
        try:
            await asyncio.open_connection(*server.address)
            refused = False
        except OSError:
            refused = True
        return int(greeting[:3]), refused

    assert runtime.run(main()) == (220, True)


def test_idle_timeout_is_421_and_close():
    server = Recorder(("127.0.0.1", 0), None, idle_timeout=0.3)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO a")
        time.sleep(0.15)
        assert c.cmd("NOOP")[0] == 250  # activity re-arms the timer
        assert c.reply() == (421, "4.4.2 Error: timeout exceeded")
        assert c.closed()


def test_too_many_bad_commands_is_421_and_close():
    server = Recorder(("127.0.0.1", 0), None, max_bad_commands=3)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert c.cmd("FOO")[0] == 500
        assert c.cmd("EHLO client.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd("x\r\n.")[0] == 250  # an accepted message forgives the errors
        assert c.cmd("BAR")[0] == 500
        assert c.cmd("NOOP")[0] == 250  # a good command does not (Postfix's hard limit)
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 503  # refused RCPTs count too
        assert c.cmd("FOO")[0] == 500
        assert c.reply() == (421, str(replies.TOO_MANY_ERRORS)[4:])
        assert c.closed()


def test_total_connection_cap_is_421_4_7_0():
    server = Recorder(("127.0.0.1", 0), None, max_connections=2)
    with serving(server) as address:
        a, b = RawClient(address), RawClient(address)
        assert a.reply()[0] == b.reply()[0] == 220
        with RawClient(address) as c:
            assert c.reply() == (421, "4.7.0 Too many connections, try again later")
            assert c.closed()
        a.close()
        time.sleep(0.1)
        with RawClient(address) as d:
            assert d.reply()[0] == 220
        b.close()


def test_per_client_cap_is_421_and_loopback_exemption_is_a_setting():
    server = Recorder(("127.0.0.1", 0), None, max_connections_per_client=1, per_client_exempt=())
    with serving(server) as address, RawClient(address) as a:
        assert a.reply()[0] == 220
        with RawClient(address) as b:
            assert b.reply() == (
                421,
                "4.7.0 Too many connections from your address, try again later",
            )


def _listen_backlog(port: int) -> int:
    """The backlog the kernel holds for a listening port (ss's Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


def test_the_listen_backlog_is_the_one_configured():
    server = Recorder(("127.0.0.1", 0), None, backlog=7)
    with serving(server) as address:
        # asyncio's create_server listens again (100 by default): ours must stand
        assert _listen_backlog(address[1]) == 7


def test_loopback_is_exempt_from_the_per_client_cap_by_default():
    server = Recorder(("127.0.0.1", 0), None, max_connections_per_client=1)
    with serving(server) as address, RawClient(address) as a, RawClient(address) as b:
        assert a.reply()[0] == b.reply()[0] == 220


def test_graceful_close_421s_idle_sessions_and_lets_a_transaction_finish():
    import asyncio

    server = Recorder(("127.0.0.1", 0), None)
    result: dict[str, Any] = {}

    async def main() -> None:
        await server.start()
        loop = asyncio.get_running_loop()

        def clients() -> None:
            with RawClient(server.address) as idle, RawClient(server.address) as busy:
                idle.reply()
                busy.reply()
                idle.cmd("EHLO a")
                busy.cmd("EHLO a")
                busy.cmd("MAIL FROM:<a@example.com>")
                busy.cmd("RCPT TO:<b@example.com>")
                asyncio.run_coroutine_threadsafe(server.close(timeout=5), loop)
                result["idle"] = idle.reply()
                result["busy_data"] = busy.cmd("DATA")
                result["busy_end"] = busy.cmd(b"x\r\n.")
                result["busy_after"] = busy.reply()

        await loop.run_in_executor(None, clients)

    runtime.run(main())
    assert result["idle"][0] == 421
    assert result["busy_data"][0] == 354
    assert result["busy_end"][0] == 250
    assert result["busy_after"][0] == 421
    assert len(server.messages) == 1


def test_a_classic_smtpd_sqlite_archive_works_with_8_concurrent_clients(tmp_path):
    port, database = free_port(), tmp_path / "archive.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.smtpd_archive", str(port), str(database)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "READY\n"

        def client(n: int) -> list[int]:
            codes = []
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                smtp.ehlo("client.example")
                for m in range(5):
                    smtp.mail(f"c{n}m{m}@example.com")
                    smtp.rcpt("archive@example.org")
                    codes.append(smtp.data(b"Subject: archived\r\n\r\n" + b"x" * (100 * m))[0])
            return codes

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client, range(8)))
    finally:
        proc.terminate()
        proc.wait(10)
    assert results == [[250] * 5] * 8
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT sender, thread FROM archive").fetchall()
    assert len(rows) == 40
    assert {thread for _, thread in rows} == {"MainThread"}  # where __init__ ran


def _dribble(c: RawClient, chunks: list[bytes], pause: float) -> None:
    """Send ``chunks`` slowly until the server says something."""
    for chunk in chunks:
        c.send(chunk)
        if select.select([c.sock], [], [], pause)[0]:
            return
    raise AssertionError("the server let it go on")


def test_a_command_line_dribbled_byte_by_byte_is_cut_off():
    server = Recorder(("127.0.0.1", 0), None, command_timeout=1.0)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        started = time.monotonic()
        # each byte would re-arm the idle timer; the command's deadline holds
        _dribble(c, [bytes([b]) for b in b"NOOP and on and on and on and on"], 0.2)
        assert c.reply() == (421, "4.4.2 Error: timeout exceeded")
        assert time.monotonic() - started < 4
        assert c.closed()


class SlowMail:
    """A plugin that takes 0.5 s over MAIL: the session waits meanwhile."""

    async def hook_mail(self, ctx: Any, mail: Any) -> None:
        await asyncio.sleep(0.5)


def test_a_command_line_begun_while_the_session_waited_is_still_cut_off():
    server = Recorder(("127.0.0.1", 0), None, command_timeout=1.0, plugins=[SlowMail()])
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO a")
        started = time.monotonic()
        # the start of the next command arrives while MAIL's verdict is awaited
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@exa")
        assert c.reply()[0] == 250
        assert c.reply() == (421, "4.4.2 Error: timeout exceeded")
        assert time.monotonic() - started < 4
        assert c.closed()


def test_message_text_below_the_minimum_rate_is_cut_off():
    server = Recorder(("127.0.0.1", 0), None, min_data_rate=1000, data_rate_grace=1.0)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        for line in ("EHLO a", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA"):
            c.cmd(line)
        _dribble(c, [b"slow line\r\n"] * 30, 0.2)
        assert c.reply() == (421, "4.4.2 Error: message text arrives too slowly")
        assert c.closed()
    assert server.messages == []
