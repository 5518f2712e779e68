"""Two gateways behind HAProxy, one Mailman, one PostgreSQL store: six hosts
in network namespaces of the test's own (see netns.py).

    client 10.231.0.10 -> lb (HAProxy, leastconn, send-proxy-v2, SMTP checks)
        -> gw-a 10.231.0.11, gw-b 10.231.0.12 (mmgate serve, remote Mailman)
            -> mailman 10.231.0.20 (REST and LMTP runners only)
            -> db 10.231.0.30 (PostgreSQL: the store both gateways share)

Only Mailman's REST and LMTP runners run, so every post the gateways hand
over stays in Mailman's ``in`` queue, where the test counts it. Run alone
with ``pytest -m scaleout -s`` (``-s`` shows the sessions-per-second lines).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mmgate.mailman.embedded import ensure_home
from tests import haproxy, postgres
from tests.scaleout import netns

pytestmark = [pytest.mark.scaleout, pytest.mark.servers]

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"client": 10, "lb": 2, "gwa": 11, "gwb": 12, "mailman": 20, "db": 30}
GATEWAYS = {"gwa": "gw-a.test", "gwb": "gw-b.test"}
SMTP, API, REST, LMTP, PG = 2525, 8026, 8001, 8024, 5432
TOKEN = "scale-out-token"


@dataclass
class Site:
    net: netns.Network
    dir: Path
    mailman_var: Path
    lb: str
    gateways: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    haproxy_socket: Path | None = None

    def ip(self, host: str) -> str:
        return self.net.hosts[host]

    def client(self, *args: str, timeout: float = 120) -> Any:
        """The client program inside the client host; its JSON answer."""
        done = self.net.run(
            "client",
            [sys.executable, "-m", "tests.scaleout.client", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    def api(self, host: str, path: str) -> Any:
        return self.client("get", f"http://{self.ip(host)}:{API}{path}", TOKEN)

    def haproxy_state(self) -> dict[str, str]:
        """Each backend server's status, from HAProxy's stats socket (a
        Unix socket in the test's directory: no network)."""
        assert self.haproxy_socket is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.haproxy_socket))
            s.sendall(b"show stat\n")
            text = b""
            while chunk := s.recv(65536):
                text += chunk
        rows = [line.split(",") for line in text.decode().splitlines() if line]
        header = rows[0]
        status, svname = header.index("status"), header.index("svname")
        return {
            r[svname]: r[status] for r in rows[1:] if r[0] == "gateways" and r[svname] != "BACKEND"
        }

    def queued(self) -> Counter[str]:
        """Message-IDs of the posts in Mailman's ``in`` queue, with counts."""
        got: Counter[str] = Counter()
        for entry in (self.mailman_var / "queue" / "in").glob("*.pck"):
            with entry.open("rb") as f:
                msg = pickle.load(f)
                data = pickle.load(f)
            assert data["listid"] == "test.example.com"
            got[str(msg["message-id"])] += 1
        return got


def _gateway_config(site_dir: Path, host: str, ip: str, ips: dict[str, str], password: str) -> Path:
    path = site_dir / f"{host}.toml"
    path.write_text(
        f"""
[smtp]
listen = "{ip}:{SMTP}"
hostname = "{GATEWAYS[host]}"
proxy_protocol = true
proxy_networks = ["{ips["lb"]}/32"]

[mailman]
url = "http://{ips["mailman"]}:{REST}"
user = "restadmin"
password = "{password}"
lmtp = "{ips["mailman"]}:{LMTP}"
var_dir = "{site_dir / host}"
refresh_interval = 1.0

[api]
store = "postgresql+psycopg://mmgate@{ips["db"]}:{PG}/mmgate"
token = "{TOKEN}"
bind = "{ip}:{API}"
"""
    )
    return path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    if not (postgres.available() and haproxy.available()):
        pytest.skip("Debian's postgresql and haproxy are needed (tests/install_packages.sh)")
    net = netns.Network(HOSTS).open()
    site_dir = Path(tempfile.mkdtemp(prefix="mmgate-scaleout-"))
    pg = lb = None
    try:
        ips = net.hosts
        # -- PostgreSQL, as the postgres user, in the db host
        pg = postgres.PostgreSQL(PG, host=ips["db"], prefix=net.prefix("db")).start()
        # -- Mailman: a home of its own; REST and LMTP on the mailman host's address
        cfg = ensure_home(site_dir / "mailman", lmtp_port=LMTP, rest_port=REST)
        text = cfg.read_text()
        cfg.write_text(
            text.replace("lmtp_host: 127.0.0.1", f"lmtp_host: {ips['mailman']}").replace(
                "hostname: 127.0.0.1", f"hostname: {ips['mailman']}"
            )
        )
        password = next(
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("admin_pass:")
        )
        mailman_cmd = [sys.executable, "-m", "mmgate", "mailman", "--mailman-config", str(cfg)]
        made = net.run(
            "mailman", [*mailman_cmd, "create", "test@example.com"], capture_output=True, text=True
        )
        assert made.returncode == 0, made.stdout + made.stderr
        runner = str(Path(sys.executable).with_name("runner"))
        logs = site_dir / "logs"
        logs.mkdir()
        for name, port in (("rest", REST), ("lmtp", LMTP)):
            with (logs / f"mailman-{name}.log").open("wb") as log:
                proc = net.popen(
                    "mailman",
                    [runner, "-C", str(cfg), f"--runner={name}:0:1"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            net.wait_listening("mailman", port, proc)
        site = Site(net, site_dir, (site_dir / "mailman" / "mailman").resolve(), ips["lb"])
        # -- the two gateways, each with its admin API
        for host in GATEWAYS:
            config = _gateway_config(site_dir, host, ips[host], ips, password)
            with (logs / f"{host}.log").open("wb") as log:
                site.gateways[host] = net.popen(
                    host,
                    [sys.executable, "-m", "mmgate", "serve", "--config", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=site_dir,
                )
        for host, proc in site.gateways.items():
            net.wait_listening(host, SMTP, proc)
            net.wait_listening(host, API, proc)
        # -- HAProxy in front
        site.haproxy_socket = site_dir / "haproxy.sock"
        lb = haproxy.HAProxy(
            SMTP,
            [
                f"{host} {ips[host]}:{SMTP} send-proxy-v2 check check-send-proxy "
                "inter 300 fall 2 rise 2"
                for host in GATEWAYS
            ],
            bind=ips["lb"],
            backend=["option smtpchk EHLO lb.test", "option redispatch", "retries 3"],
            global_=[f"stats socket {site.haproxy_socket} level admin"],
            prefix=net.prefix("lb"),
            ready=lambda proc: net.wait_listening("lb", SMTP, proc),
        ).start()
        deadline = time.monotonic() + 20
        while set(site.haproxy_state().values()) != {"UP"}:
            assert time.monotonic() < deadline, site.haproxy_state()
            time.sleep(0.1)
        yield site
    finally:
        if lb is not None:
            lb.stop()
        if pg is not None:
            pg.stop()  # a clean shutdown, before anything left is killed
        net.close()  # the gateways, Mailman's runners, whatever else ran inside
        if os.environ.get("MMGATE_KEEP_SCALEOUT"):
            print(f"scale-out logs kept in {site_dir}")
        else:
            shutil.rmtree(site_dir, ignore_errors=True)


def _rate(run: dict[str, Any]) -> float:
    return len(run["results"]) / run["elapsed"]


def test_two_gateways_one_mailman_one_store(site: Site):
    lb = f"{site.lb}:{SMTP}"
    acked: list[str] = []

    # Both gateways take sessions; every post is answered 250.
    first = site.client("posts", lb, "300", "8", "two")
    results = first["results"]
    assert [r for r in results if r["code"] != 250] == []
    by_gateway = Counter(r["gateway"] for r in results)
    assert set(by_gateway) == set(GATEWAYS.values()), by_gateway
    acked += [r["mid"] for r in results]
    two = _rate(first)

    # /v1/stats from either gateway counts the mail of both (the Recorder
    # writes every half second).
    time.sleep(1.5)
    stats = {host: site.api(host, "/v1/stats") for host in GATEWAYS}
    for got in stats.values():
        assert got["total"]["messages_accepted"] == 300
        each = {g: v["total"].get("messages_accepted", 0) for g, v in got["gateways"].items()}
        assert each == {GATEWAYS[h]: by_gateway[GATEWAYS[h]] for h in GATEWAYS}

    # The client's own address reaches each gateway's journal through PROXY v2.
    journal = site.api("gwb", "/v1/messages?limit=1000&outcome=accepted")
    assert journal["total"] == 300
    assert {(e["gateway"], e["client"]) for e in journal["entries"]} == {
        (name, site.ip("client")) for name in GATEWAYS.values()
    }

    # A pause set through gateway A's API is honoured by gateway B within a second.
    paused = site.client("pause", lb, f"http://{site.ip('gwa')}:{API}", TOKEN, "test.example.com")
    assert paused["paused"]["paused"] is True
    assert set(paused["refused_after"]) == set(GATEWAYS.values()), paused
    assert paused["refused_after"]["gw-b.test"] < 1.0, paused
    assert set(paused["accepted_after"]) == set(GATEWAYS.values()), paused

    # Killing gateway A under load loses no acknowledged message, and
    # HAProxy routes around it.
    answer = site.dir / "load.json"
    with answer.open("w") as into:  # a file: a pipe nobody reads would fill
        load = site.net.popen(
            "client",
            [sys.executable, "-m", "tests.scaleout.client", "posts", lb, "0", "8", "load", "8"],
            cwd=REPO,
            stdout=into,
            stderr=subprocess.PIPE,
            text=True,
        )
    seen: list[dict[str, Any]] = []
    said: list[str] = []

    def read() -> None:
        assert load.stderr is not None
        for line in load.stderr:
            if line.startswith("{"):
                seen.append(json.loads(line))
            else:
                said.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 20
    while not {"gw-a.test", "gw-b.test"} <= {r["gateway"] for r in list(seen)}:
        assert time.monotonic() < deadline, "the load never reached both gateways"
        time.sleep(0.05)
    time.sleep(1.0)
    site.gateways["gwa"].send_signal(signal.SIGKILL)
    killed_at = time.time()
    load.wait(120)
    reader.join(10)
    assert load.returncode == 0, "".join(said)
    out = answer.read_text()
    during = json.loads(out)["results"]
    ok = [r for r in during if r["code"] == 250]
    # only sessions in flight at the kill failed: on gw-a, or not yet greeted
    failed = [r for r in during if r["code"] != 250]
    assert all(
        r["gateway"] in ("gw-a.test", None) and r["error"] and abs(r["at"] - killed_at) < 1.0
        for r in failed
    ), failed
    assert any(r["gateway"] == "gw-a.test" for r in ok) and any(
        r["gateway"] == "gw-b.test" and r["at"] > killed_at + 2 for r in ok
    )
    # after HAProxy's checks marked A down, every session went to B and succeeded
    settled = [r for r in during if r["at"] > killed_at + 2]
    assert settled and all(r["code"] == 250 and r["gateway"] == "gw-b.test" for r in settled)
    assert site.haproxy_state() == {"gwa": "DOWN", "gwb": "UP"}
    acked += [r["mid"] for r in ok]
    print(
        f"\npause: refused by each gateway after {paused['refused_after']} s; "
        f"accepted again after {paused['accepted_after']} s"
    )

    one = site.client("posts", lb, "300", "8", "one")
    assert all(r["code"] == 250 and r["gateway"] == "gw-b.test" for r in one["results"])
    acked += [r["mid"] for r in one["results"]]

    # Every acknowledged post is in Mailman exactly once; nothing is there twice.
    queued = site.queued()
    assert [m for m in acked if queued[m] != 1] == []
    assert [m for m, n in queued.items() if n > 1] == []
    print(
        f"\nscale-out: {len(acked)} posts acknowledged, {sum(queued.values())} in Mailman's "
        f"queue; {len(failed)} of {len(during)} sessions cut when gw-a was killed "
        "(none acknowledged)\n"
        f"sessions/s through two gateways: {two:.0f}; through one: {_rate(one):.0f} "
        "(8 client threads; 2 CPUs shared by every host)"
    )
