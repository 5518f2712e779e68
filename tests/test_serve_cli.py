"""`mmgate serve` and `mmgate route` as an operator runs them: real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import wait_for_port
from tests.mailman_env import MailmanEnv
from tests.upstream import Upstream, free_port

# whole `mmgate` commands in subprocesses, seconds each: once, on the default loop
pytestmark = pytest.mark.one_loop


def mmgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmgate", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def start_serve(
    cwd: Path, port: int, api_port: int, *extra: str, command: list[str] | None = None
) -> subprocess.Popen[str]:
    """``mmgate serve`` with its two ports (and ``extra`` flags), listening."""
    proc = subprocess.Popen(
        [
            *(command or [sys.executable, "-m", "mmgate"]),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--api-bind",
            f"127.0.0.1:{api_port}",
            *extra,
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, proc, "mmgate serve")
    return proc


def test_serve_with_no_configuration_runs_an_embedded_mailman(tmp_path: Path):
    port = free_port()
    api_port = free_port()
    proc = start_serve(tmp_path, port, api_port)
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.mail("a@example.org")
            # a fresh embedded Mailman has no domains: everything is "relay",
            # and no upstream is configured: temporary for this trusted client
            assert client.rcpt("b@example.org") == (
                451,
                b"4.3.5 Relaying is not configured here yet (mmgate serve --relay HOST:PORT)",
            )
        # the admin API runs beside it (gunicorn), sharing the store
        wait_for_port(api_port, proc, "the admin API beside mmgate serve")
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/health") as resp:
                    health = json.load(resp)
            except urllib.error.HTTPError as degraded:  # 503 until the first heartbeat
                health = json.load(degraded)
            if health["smtp"]["up"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert health["smtp"]["up"] is True and health["store"]["ok"] is True
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "var" / "mailman.cfg").is_file()
    assert "serving on 127.0.0.1:" in err and "(0 lists, 0 domains)" in err
    with pytest.raises(OSError):  # the API stopped with it
        socket.create_connection(("127.0.0.1", api_port), timeout=1)


def test_route_prints_what_the_gateway_would_do(mailman_env: MailmanEnv):
    done = mmgate(
        "route",
        "--mailman-config",
        str(mailman_env.config),
        "--relay",
        "127.0.0.1:2525",
        "test-request@alias.example",
        "nolist@example.com",
        "bob@elsewhere.example",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "test-request@alias.example  list test.example.com, subaddress request, queue command",
        "nolist@example.com          reject 550 5.1.1 No such list or address here: "
        "nolist@example.com",
        "bob@elsewhere.example       relay to 127.0.0.1:2525",
    ]


def test_route_json_and_relay_control_for_another_client(mailman_env: MailmanEnv):
    done = mmgate(
        "route",
        "--json",
        "--mailman-config",
        str(mailman_env.config),
        "--relay",
        "127.0.0.1:2525",
        "--client",
        "192.0.2.1",
        "foo-bar-owner@example.com",
        "bob@elsewhere.example",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {
            "address": "foo-bar-owner@example.com",
            "action": "list",
            "list_id": "foo-bar.example.com",
            "listname": "foo-bar@example.com",
            "subaddress": "owner",
            "queue": "in",
        },
        {
            "address": "bob@elsewhere.example",
            "action": "reject",
            "reply": {"code": 554, "status": "5.7.1", "text": "Relay access denied"},
        },
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--mailman-config", "/nonexistent/mailman.cfg"],
            "Mailman cannot be used: /nonexistent/mailman.cfg: no such Mailman configuration file",
        ),
        (["--listen", "localhost"], "--listen: must be HOST:PORT, not 'localhost'"),
        (["--relay", "nowhere"], "--relay: must be HOST:PORT, not 'nowhere'"),
        (
            ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
            "TLS cannot be used: /nonexistent/cert.pem: no such file",
        ),
        (
            ["--tls-cert", "/nonexistent/cert.pem"],
            "--tls-cert: a certificate needs its key (--tls-cert with --tls-key)",
        ),
    ],
)
def test_serve_refuses_to_start_with_one_line_naming_the_problem(tmp_path: Path, args, message):
    done = mmgate("serve", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"mmgate: error: {message}\n"


def test_serve_names_the_file_and_key_of_a_bad_setting(tmp_path: Path):
    cfg = tmp_path / "mmgate.toml"
    cfg.write_text('[smtp]\nlisten = "127.0.0.1"\n')
    done = mmgate("serve", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"mmgate: error: {cfg}: smtp.listen: must be HOST:PORT, not '127.0.0.1'\n"


def test_smtpd_command_runs_mailmanproxy_on_an_embedded_mailman(tmp_path: Path):
    from tests.test_cli_debugging import running, stop

    refuser = socket.socket()
    refuser.bind(("127.0.0.1", 0))  # an upstream that is down: bound, not listening
    with running("-c", "MailmanProxy", remote=refuser.getsockname(), cwd=str(tmp_path)) as (
        proc,
        port,
    ):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.mail("a@example.org")
            assert client.rcpt("b@elsewhere.example") == (
                451,
                b"4.4.1 Upstream unreachable, try again later",
            )
        assert stop(proc)[0] == 0
    refuser.close()
    assert (tmp_path / "var" / "mailman.cfg").is_file()


def test_route_leaves_a_running_servers_staged_copies_alone(mailman_env: MailmanEnv):
    staging = mailman_env.mailman.staging_dir
    assert staging is not None
    staged = staging / "in" / "1.0+inflight.pck"
    staged.write_bytes(b"a copy waiting for its relay")
    try:
        done = mmgate("route", "--mailman-config", str(mailman_env.config), "test@example.com")
        assert done.returncode == 0, done.stderr
        assert staged.exists()
    finally:
        staged.unlink(missing_ok=True)


def test_serve_says_so_when_the_api_cannot_start_and_keeps_serving_mail(tmp_path: Path):
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    proc = start_serve(tmp_path, port, taken.getsockname()[1])
    try:
        api = f"mmgate api --bind 127.0.0.1:{taken.getsockname()[1]}"
        deadline = time.monotonic() + 30  # gunicorn retries its bind, then gives up
        while subprocess.run(["pgrep", "-f", api], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the API child did not give up"
            time.sleep(0.2)
        with smtplib.SMTP("127.0.0.1", port) as client:
            assert client.noop()[0] == 250
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        taken.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "the admin API exited with status" in err


def _api_children(api_port: int, parent: int | None = None) -> list[int]:
    """The API's processes (gunicorn's master and workers), or with
    ``parent``, the one process serve started (gunicorn's master)."""
    only = ["-P", str(parent)] if parent is not None else []
    done = subprocess.run(
        ["pgrep", *only, "-f", f"mmgate api --bind 127.0.0.1:{api_port}"],
        capture_output=True,
        text=True,
    )
    return [int(pid) for pid in done.stdout.split()]


def test_the_api_child_dies_with_serve_and_never_runs_code_from_the_current_directory(
    tmp_path: Path,
):
    # A ./mmgate package in the directory serve is started from: never imported.
    trap = tmp_path / "mmgate"
    trap.mkdir()
    (trap / "__init__.py").write_text(f"open({str(tmp_path / 'TRAPPED')!r}, 'w').close()\n")
    (trap / "__main__.py").write_text("")
    port, api_port = free_port(), free_port()
    # the console script, so that serve itself is not run from this directory
    proc = start_serve(
        tmp_path, port, api_port, command=[str(Path(sys.executable).with_name("mmgate"))]
    )
    try:
        wait_for_port(api_port, proc, "the admin API beside mmgate serve", timeout=60)
        assert _api_children(api_port)
        proc.kill()  # no goodbye: SIGKILL
        proc.wait(10)
        deadline = time.monotonic() + 15
        while _api_children(api_port):
            assert time.monotonic() < deadline, "the API child outlived serve"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _api_children(api_port):
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "TRAPPED").exists()
    var = tmp_path / "var"
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    assert stat.S_IMODE((var / "mailman.cfg").stat().st_mode) == 0o600


def test_sighup_reloads_relay_control_and_plugins_without_dropping_a_session(tmp_path: Path):
    port, api_port, closed = free_port(), free_port(), free_port()
    config = tmp_path / "mmgate.toml"

    def write(networks: str, plugins: str) -> None:
        config.write_text(
            f'[relay]\nupstream = "127.0.0.1:{closed}"\nnetworks = [{networks}]\n{plugins}'
        )

    write(
        '"192.0.2.0/24"', '[[plugins]]\nname = "access"\nsenders = [["spam.example", "REJECT"]]\n'
    )
    proc = start_serve(tmp_path, port, api_port, "--config", str(config))
    try:
        wait_for_port(api_port, proc, "the admin API beside mmgate serve", timeout=60)
        api_master = _api_children(api_port, parent=proc.pid)
        assert len(api_master) == 1
        with smtplib.SMTP("127.0.0.1", port) as client:  # one session across the reload
            client.ehlo("client.example")
            assert client.mail("a@spam.example")[0] == 554
            client.mail("a@example.org")
            assert client.rcpt("b@elsewhere.example")[0] == 554  # loopback may not relay
            client.rset()
            write('"127.0.0.0/8"', "")
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while client.mail("a@spam.example")[0] != 250:
                assert time.monotonic() < deadline, "the reload was not seen"
                client.rset()
                time.sleep(0.1)
            # relaying is allowed now: the (closed) upstream is tried
            assert client.rcpt("b@elsewhere.example")[0] == 451
        write('"not a network"', "")
        proc.send_signal(signal.SIGHUP)  # a bad file changes nothing
        time.sleep(0.5)
        with smtplib.SMTP("127.0.0.1", port) as client:
            assert client.noop()[0] == 250
        # serve is alive, and so is the same API master (it reloaded its workers)
        assert proc.poll() is None and _api_children(api_port, parent=proc.pid) == api_master
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "settings reloaded" in err
    assert "reload refused, settings unchanged: " in err and "'not a network'" in err


def test_mmgate_postfix_prints_the_tested_lines_for_the_configured_ports(tmp_path: Path):
    from mmgate.postfix import main_cf

    done = mmgate("postfix", "--socketmap", "127.0.0.1:9027", "--lmtp", "127.0.0.1:9024")
    assert done.returncode == 0, done.stderr
    for key, value in main_cf(("127.0.0.1", 9027)).items():
        assert f"{key} = {value}\n" in done.stdout
    assert "mmgate serve --socketmap 127.0.0.1:9027 --lmtp 127.0.0.1:9024" in done.stdout
    assert not (tmp_path / "var").exists()  # it reads settings, and writes nothing


def test_mailman_and_route_find_the_same_home_through_mmgate_var_dir(
    tmp_path: Path, mailman_env: MailmanEnv
):
    env = {**os.environ, "MMGATE_VAR_DIR": str(mailman_env.var)}
    run = [sys.executable, "-m", "mmgate"]
    lists = subprocess.run(
        [*run, "mailman", "lists"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert lists.returncode == 0, lists.stderr
    assert "test@example.com" in lists.stdout and "announce@lists.example.net" in lists.stdout
    route = subprocess.run(
        [*run, "route", "test@example.com"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert route.returncode == 0 and "list test.example.com" in route.stdout, route.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["mailman", "create", "test@example.com"],
        ["route", "test@example.com"],
        ["debug", "--listen", "127.0.0.1:0"],
        ["api", "--bind", "127.0.0.1:0"],
    ],
)
def test_a_command_without_a_home_says_so_in_one_line_and_creates_nothing(
    tmp_path: Path, command: list[str]
):
    done = mmgate(*command, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no Mailman home" in done.stderr
    assert not (tmp_path / "var").exists()


def _master_pids(config: Path) -> list[int]:
    """Mailman master processes started on ``config`` (from /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in cmdline and any(b"mailman.bin.master" in a for a in cmdline):
            found.append(int(pid))
    return found


def test_from_nothing_to_a_member_receiving_a_post_with_the_readme_commands(tmp_path: Path):
    """serve (embedded Mailman, its runners supervised), mmgate mailman
    create, mmgate mailman addmembers: a member's post reaches the member."""
    port, api_port = free_port(), free_port()
    with Upstream() as outgoing:
        proc = start_serve(
            tmp_path, port, api_port, "--relay", f"127.0.0.1:{outgoing.port}", "--no-api"
        )
        try:
            cfg = tmp_path / "var" / "mailman.cfg"
            # Mailman's copies come back through this gateway, on this run's port
            assert f"smtp_port: {port}\n" in cfg.read_text()
            created = mmgate("mailman", "create", "team@example.com", cwd=tmp_path)
            assert created.returncode == 0, created.stderr
            (tmp_path / "members.txt").write_text("Bob <bob@example.net>\n")
            added = mmgate("mailman", "addmembers", "members.txt", "team@example.com", cwd=tmp_path)
            assert added.returncode == 0, added.stderr
            deadline = time.monotonic() + 30
            while True:  # the gateway learns of the list within its refresh interval
                with smtplib.SMTP("127.0.0.1", port) as client:
                    client.ehlo()
                    client.mail("bob@example.net")
                    if client.rcpt("team@example.com")[0] == 250:
                        client.data(
                            b"From: bob@example.net\r\nTo: team@example.com\r\n"
                            b"Subject: hello team\r\nMessage-ID: <readme-1@example.net>\r\n\r\n"
                            b"Hello, team.\r\n"
                        )
                        break
                assert time.monotonic() < deadline, "the new list was never accepted"
                time.sleep(0.5)
            deadline = time.monotonic() + 60
            while True:  # the welcome message comes first, then the post
                copies = [
                    m
                    for m in outgoing.handler.messages
                    if b"Subject: [Team] hello team" in (m.original_content or b"")
                ]
                if copies:
                    break
                assert time.monotonic() < deadline, "no member's copy left Mailman"
                time.sleep(0.2)
            assert copies[0].rcpt_tos == ["bob@example.net"]
            assert _master_pids(cfg)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Mailman's runners started" in err and "Mailman's runners stopped" in err
    assert _master_pids(cfg) == []  # stopped with serve


def test_serve_applies_the_session_settings_from_flags_and_file(tmp_path: Path):
    (tmp_path / "mmgate.toml").write_text("[smtp]\nmessage_size = 5000\nsmtputf8 = true\n")
    port = free_port()
    proc = start_serve(
        tmp_path,
        port,
        free_port(),
        "--config",
        "mmgate.toml",
        "--hostname",
        "mx.example.org",
        "--no-api",
        "--no-runners",
    )
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            code, features = client.ehlo()
            assert code == 250 and features.startswith(b"mx.example.org")
            assert b"SIZE 5000" in features and b"SMTPUTF8" in features
            client.mail("a@example.org")
            code, _ = client.rcpt("postmaster@mx.example.org")  # this host's name is served
            assert code == 250
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_serve_offers_starttls_out_of_the_box_and_reloads_its_certificate_on_sighup(
    tmp_path: Path,
):
    import ssl

    import trustme

    def pair(ca: trustme.CA, name: str) -> None:
        leaf = ca.issue_cert("mx.example.org", "127.0.0.1")
        leaf.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))

    def trusting(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return context

    # out of the box: a self-signed certificate, made once, its key private
    port = free_port()
    proc = start_serve(tmp_path, port, free_port(), "--no-api", "--no-runners")
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            assert client.starttls(context=unverified)[0] == 220
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    key = tmp_path / "var" / "tls" / "key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600

    # a configured pair, replaced and reloaded on SIGHUP
    first, second = trustme.CA(), trustme.CA()
    pair(first, "live")
    (tmp_path / "mmgate.toml").write_text(
        f'[tls]\ncert = "{tmp_path / "live.pem"}"\nkey = "{tmp_path / "live.key"}"\n'
    )
    port = free_port()
    proc = start_serve(
        tmp_path, port, free_port(), "--config", "mmgate.toml", "--no-api", "--no-runners"
    )
    try:
        with smtplib.SMTP("127.0.0.1", port) as old_session:
            old_session.starttls(context=trusting(first))
            old_session.ehlo()
            pair(second, "live")
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                with smtplib.SMTP("127.0.0.1", port) as client:
                    try:
                        client.starttls(context=trusting(second))
                        break
                    except ssl.SSLError:
                        assert time.monotonic() < deadline, "the new certificate never came"
                time.sleep(0.2)
            assert old_session.noop()[0] == 250  # the session in TLS went on
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "settings reloaded" in err


def test_serve_behind_a_balancer_reads_the_proxy_header_first(tmp_path: Path):
    port = free_port()
    proc = start_serve(tmp_path, port, free_port(), "--proxy-protocol", "--no-api", "--no-runners")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 25\r\nQUIT\r\n")
            with sock.makefile("rb") as replies:
                assert replies.readline().startswith(b"220 ")
                assert replies.readline().startswith(b"221 ")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"EHLO no-header.example\r\n")
            with contextlib.suppress(ConnectionResetError):  # closed without a greeting
                assert sock.recv(1024) == b""
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_what_a_process_group_leader_leaves_behind_is_ended(tmp_path: Path):
    """Mailman's master can exit and leave a runner (one it forked after it
    took SIGTERM); stopping the runners ends the rest of its group, even a
    process that ignores SIGTERM."""
    from mmgate.mailman.runners import _group_alive, end_group

    leader = subprocess.Popen(
        ["sh", "-c", '(trap "" TERM; exec sleep 60) >/dev/null & echo $!'],
        stdout=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    out, _ = leader.communicate(timeout=10)
    straggler = int(out)
    try:
        assert _group_alive(leader.pid)  # the leader is gone, its child is not
        end_group(leader.pid, grace=0.5)
        assert not _group_alive(leader.pid)
        state = Path(f"/proc/{straggler}/stat")
        assert not state.exists() or state.read_text().rpartition(")")[2].split()[0] == "Z"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(straggler, signal.SIGKILL)


def test_runners_stop_whole_and_fast(tmp_path: Path):
    from mmgate.mailman.embedded import ensure_home
    from mmgate.mailman.runners import MailmanRunners, _group_alive

    runners = MailmanRunners(ensure_home(tmp_path / "var"), runners=("retry", "task"))
    runners.start()
    time.sleep(2)
    assert runners.proc is not None and _group_alive(runners.proc.pid)
    started = time.monotonic()
    runners.stop(timeout=30)
    assert not _group_alive(runners.proc.pid)
    assert time.monotonic() - started < 10
