"""`mmgate smtpd` and DebuggingServer as a person runs them: a real process."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mmgate.mailman.embedded import free_port
from tests.harness import wait_for_port


@contextmanager
def running(
    *args: str,
    module: str = "mmgate",
    remote: tuple[str, int] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        module,
        *(["smtpd"] if module == "mmgate" else []),
        "-n",
        *args,
        f"127.0.0.1:{port}",
    ]
    if remote is not None:
        cmd.append(f"{remote[0]}:{remote[1]}")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    wait_for_port(port, proc, " ".join(cmd))
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    return proc.returncode, out, err


@pytest.mark.parametrize("module", ["mmgate", "mmgate.smtpd"])
def test_debugging_server_prints_smtpd_format_and_stops_on_sigterm(module: str):
    with running("-c", "DebuggingServer", module=module) as (proc, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "eggs@example.com", ["spam@example.com"], b"From: test\r\n\r\nHello World\r\n"
            )
        code, out, err = stop(proc)
    assert code == 0, err
    assert out == (  # exactly what python -m smtpd -c DebuggingServer printed
        "---------- MESSAGE FOLLOWS ----------\n"
        "mail options: ['SIZE=27']\n"
        "b'From: test'\n"
        "b'X-Peer: 127.0.0.1'\n"
        "b''\n"
        "b'Hello World'\n"
        "------------ END MESSAGE ------------\n"
    )


def test_debugging_server_is_lenient_about_long_lines_and_bare_lf():
    with running("-c", "DebuggingServer") as (proc, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.mail("a@example.com")
            client.rcpt("b@example.com")
            code, _ = client.data(b"Subject: long\n\n" + b"x" * 5000)
        _, out, _ = stop(proc)
    assert code == 250
    assert "b'" + "x" * 5000 + "'" in out


def test_size_flag_sets_the_limit():
    with running("-c", "DebuggingServer", "-s", "1000") as (proc, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            assert b"SIZE 1000" in client.ehlo()[1]
        stop(proc)


def test_dotted_class_path_is_loaded():
    with running("-c", "tests.harness.Recorder") as (proc, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            assert client.noop()[0] == 250
        assert stop(proc)[0] == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["-c", "NoSuchServer"], "unknown class 'NoSuchServer'"),
        (["-c", "os.NoSuchThing"], "cannot load class 'os.NoSuchThing'"),
        (["-c", "collections.OrderedDict"], "is not an SMTPServer subclass"),
        (["-s", "-5"], "--size must be 0 or more"),
        (["nohostport"], "the local address: must be HOST:PORT"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str):
    proc = subprocess.run(
        [sys.executable, "-m", "mmgate", "smtpd", "-n", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmgate",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2
    assert "cannot listen on" in proc.stderr and proc.stderr.count("\n") == 1


def test_debugging_server_class_also_prints_the_envelope(capsys: pytest.CaptureFixture[str]):
    from mmgate import DebuggingServer
    from tests.harness import serving

    with (
        serving(DebuggingServer(("127.0.0.1", 0), None)) as address,
        smtplib.SMTP(*address) as client,
    ):
        client.sendmail("a@example.com", ["b@example.org", "c@example.org"], b"x: y\r\n\r\nz\r\n")
    out = capsys.readouterr().out
    assert out.startswith(
        "Envelope from: a@example.com\nEnvelope to: b@example.org, c@example.org\n"
        "---------- MESSAGE FOLLOWS ----------\n"
    )
