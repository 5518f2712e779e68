"""The admin API: in-process with falcon.testing, through a real gunicorn,
and against a running SMTP server sharing the store."""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mmgate.api import ApiSettings, create_app
from mmgate.gateway import MailmanProxy
from mmgate.store import Store
from tests.harness import RawClient, serving, wait_for_port
from tests.mailman_env import MailmanEnv
from tests.upstream import free_port

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mmgate.db'}"


@pytest.fixture
def api(mm: MailmanEnv, store_url: str) -> falcon.testing.TestClient:
    settings = ApiSettings(
        store_url=store_url,
        backend=mm.mailman,
        token=TOKEN,
        upstream=("127.0.0.1", 2525),
        snapshot_ttl=0.0,
    )
    return falcon.testing.TestClient(create_app(settings))


def test_health_needs_no_credentials_and_says_what_it_depends_on(api):
    got = api.simulate_get("/v1/health")
    assert got.status_code == 503  # no SMTP heartbeat here: degraded, and says so
    assert got.json["mailman"]["ok"] is True and got.json["store"]["ok"] is True
    assert got.json["smtp"]["up"] is False and got.json["status"] == "degraded"


def test_health_judges_its_own_gateway_and_lists_the_others(mm, store_url):
    """Gateways sharing a store each beat under their host name: an API is
    healthy when its own SMTP side is, however the others are."""
    store = Store(store_url)
    store.started("gw-b.example.org")
    settings = ApiSettings(
        store_url=store_url, backend=mm.mailman, gateway="gw-a.example.org", snapshot_ttl=0.0
    )
    client = falcon.testing.TestClient(create_app(settings))
    got = client.simulate_get("/v1/health")
    assert got.status_code == 503 and got.json["smtp"]["up"] is False
    assert got.json["gateways"]["gw-b.example.org"]["up"] is True
    store.started("gw-a.example.org")
    got = client.simulate_get("/v1/health")
    assert got.status_code == 200 and got.json["smtp"]["gateway"] == "gw-a.example.org"
    assert set(got.json["gateways"]) == {"gw-a.example.org", "gw-b.example.org"}


@pytest.mark.parametrize(
    "path",
    ["/v1/lists", "/v1/stats", "/v1/messages", "/v1/route?address=a@b.c", "/v1/openapi.json"],
)
def test_everything_but_health_needs_the_token(api, path):
    got = api.simulate_get(path)
    assert got.status_code == 401
    assert got.headers["WWW-Authenticate"].startswith('Bearer realm="mmgate"')
    assert got.json["title"] == "Authentication required"
    assert api.simulate_get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_basic_auth_with_the_token_as_password_works(api):
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert (
        api.simulate_get("/v1/lists", headers={"Authorization": f"Basic {basic}"}).status_code
        == 200
    )


def test_lists_show_every_routed_list_with_subaddresses_and_pause_state(api):
    got = api.simulate_get("/v1/lists", headers=AUTH).json["entries"]
    test = next(e for e in got if e["list_id"] == "test.example.com")
    assert test["posting_address"] == "test@example.com" and test["paused"] is False
    assert test["subaddresses"]["request"] == {
        "address": "test-request@example.com",
        "queue": "command",
    }
    assert test["subaddresses"]["bounces"]["queue"] == "bounces"
    assert {e["list_id"] for e in got} >= {"foo-bar.example.com", "x-owner.example.com"}


def test_one_list_by_id_or_posting_address_and_404_as_json(api):
    by_id = api.simulate_get("/v1/lists/foo-bar.example.com", headers=AUTH)
    by_address = api.simulate_get("/v1/lists/Foo-Bar@example.com", headers=AUTH)
    assert by_id.json == by_address.json and by_id.json["list_id"] == "foo-bar.example.com"
    missing = api.simulate_get("/v1/lists/nope@example.com", headers=AUTH)
    assert missing.status_code == 404 and missing.json["title"] == "No such list"


def test_route_is_the_answer_of_mmgate_route(api):
    assert api.simulate_get(
        "/v1/route", params={"address": "test-join@alias.example"}, headers=AUTH
    ).json == {
        "address": "test-join@alias.example",
        "action": "list",
        "list_id": "test.example.com",
        "listname": "test@example.com",
        "subaddress": "join",
        "queue": "command",
    }
    assert (
        api.simulate_get(
            "/v1/route", params={"address": "bob@elsewhere.example"}, headers=AUTH
        ).json["upstream"]
        == "127.0.0.1:2525"
    )
    refused = api.simulate_get(
        "/v1/route",
        params={"address": "bob@elsewhere.example", "client": "192.0.2.1"},
        headers=AUTH,
    )
    assert refused.json["reply"]["code"] == 554


@pytest.mark.parametrize("query", [{}, {"address": ""}])
def test_missing_address_is_400_with_a_json_body(api, query):
    got = api.simulate_get("/v1/route", params=query, headers=AUTH)
    assert got.status_code == 400 and "title" in got.json


@pytest.mark.parametrize("address", ["not an address", "a@", "a..b@example.com"])
def test_malformed_address_is_answered_as_rcpt_would_answer_it(api, address):
    got = api.simulate_get("/v1/route", params={"address": address}, headers=AUTH)
    assert got.status_code == 200
    assert got.json["action"] == "reject" and got.json["reply"]["code"] == 501


@pytest.mark.parametrize(
    "query",
    [{"limit": "0"}, {"limit": "x"}, {"limit": "1001"}, {"offset": "-1"}, {"outcome": "maybe"}],
)
def test_bad_paging_is_400(api, query):
    assert api.simulate_get("/v1/messages", params=query, headers=AUTH).status_code == 400


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "-1", "0", "1001", "ten"])
def test_a_limit_that_is_not_an_ascii_number_in_range_is_400(api, limit):
    got = api.simulate_get("/v1/messages", params={"limit": limit}, headers=AUTH)
    assert got.status_code == 400
    assert got.json["description"] == "limit must be a whole number 1..1000"


def test_messages_are_newest_first_paged_and_filtered(api, store_url):
    store = Store(store_url)
    store.apply(
        "gw.example",
        {"messages_accepted": 3},
        [
            {
                "time": float(n),
                "client": "127.0.0.1",
                "sender": f"s{n}@example.org",
                "size": 10,
                "message_id": f"<m{n}@x>",
                "queue_id": f"Q{n}",
                "outcome": code,
                "reply": f"{code}",
                "lists": f" {lst} ",
                "recipients": [{"address": "a@b", "route": "r", "outcome": code}],
            }
            for n, (code, lst) in enumerate(
                [(250, "test.example.com"), (451, "test.example.com"), (250, "x.example.com")]
            )
        ],
    )
    page = api.simulate_get("/v1/messages", params={"limit": "2"}, headers=AUTH).json
    assert page["total"] == 3 and [e["queue_id"] for e in page["entries"]] == ["Q2", "Q1"]
    by_list = api.simulate_get(
        "/v1/messages", params={"list": "test@example.com"}, headers=AUTH
    ).json
    assert [e["queue_id"] for e in by_list["entries"]] == ["Q1", "Q0"]
    temporary = api.simulate_get("/v1/messages", params={"outcome": "temporary"}, headers=AUTH).json
    assert [e["queue_id"] for e in temporary["entries"]] == ["Q1"]
    assert api.simulate_get("/v1/stats", headers=AUTH).json["total"]["messages_accepted"] == 3


def test_pause_and_resume_are_kept_in_the_store(api, store_url):
    put = api.simulate_put("/v1/lists/test@example.com/pause", headers=AUTH)
    assert put.json["paused"] is True and put.json["list_id"] == "test.example.com"
    assert "test.example.com" in Store(store_url).paused()
    assert api.simulate_get("/v1/lists/test.example.com", headers=AUTH).json["paused"] is True
    assert (
        api.simulate_delete("/v1/lists/test.example.com/pause", headers=AUTH).json["paused"]
        is False
    )
    assert Store(store_url).paused() == {}
    assert api.simulate_put("/v1/lists/nope.example.com/pause", headers=AUTH).status_code == 404


def test_refresh_asks_the_smtp_side_through_the_store(api, store_url):
    got = api.simulate_post("/v1/refresh", headers=AUTH)
    assert got.status_code == 202
    assert Store(store_url).control_value("refresh_requested") == got.json["requested_at"]


# -- with a running SMTP server ----------------------------------------------


def rcpt(address: tuple[str, int], to: str) -> tuple[int, str]:
    with RawClient(address) as c:
        c.reply()
        c.cmd("EHLO a")
        c.cmd("MAIL FROM:<alice@example.org>")
        return c.cmd(f"RCPT TO:<{to}>")


def test_pause_is_seen_by_a_running_smtp_server_within_seconds(mm, api, store_url):
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman, store=Store(store_url))
    with serving(server) as address:
        assert rcpt(address, "test@example.com")[0] == 250
        api.simulate_put("/v1/lists/test.example.com/pause", headers=AUTH)
        deadline = time.monotonic() + 2
        while (reply := rcpt(address, "test@example.com"))[0] != 451:
            assert time.monotonic() < deadline, "pause not seen within 2 s"
            time.sleep(0.1)
        assert reply == (
            451,
            "4.2.1 List test.example.com is paused for maintenance, try again later",
        )
        assert rcpt(address, "foo-bar@example.com")[0] == 250  # other lists go on
        api.simulate_delete("/v1/lists/test.example.com/pause", headers=AUTH)
        deadline = time.monotonic() + 2
        while rcpt(address, "test@example.com")[0] != 250:
            assert time.monotonic() < deadline, "resume not seen within 2 s"
            time.sleep(0.1)


def test_transactions_show_in_stats_and_journal(mm, api, store_url):
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman, store=Store(store_url))
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail(
            "alice@example.org",
            ["test@example.com", "test-owner@example.com"],
            b"Subject: journal\r\nMessage-ID: <j-1@example.org>\r\n\r\nx\r\n",
        )
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("alice@example.org", ["nolist@example.com"], b"x\r\n")
    refused, entry = api.simulate_get("/v1/messages", headers=AUTH).json["entries"]
    assert refused["outcome"] == 550 and refused["recipients"] == [
        {
            "address": "nolist@example.com",
            "route": "reject 550 5.1.1 No such list or address here: nolist@example.com",
            "outcome": 550,
        }
    ]
    assert api.simulate_get("/v1/messages", params={"outcome": "refused"}, headers=AUTH).json[
        "entries"
    ] == [refused]
    assert entry["sender"] == "alice@example.org" and entry["outcome"] == 250
    assert entry["message_id"] == "<j-1@example.org>"
    assert [r["route"] for r in entry["recipients"]] == [
        "list:test.example.com->in",
        "list:test.example.com-owner->in",
    ]
    stats = api.simulate_get("/v1/stats", headers=AUTH).json["since_start"]
    assert stats["messages_accepted"] == 1 and stats["injected:in"] == 2
    assert stats["recipients_refused:550"] == 1 and stats["connections"] == 1
    health = api.simulate_get("/v1/health")
    assert health.json["smtp"]["up"] is True and health.status_code == 200
    head = api.simulate_head("/v1/health")
    assert head.status_code == 200 and head.content == b""


def test_a_store_that_is_down_does_not_stop_mail(mm):
    broken = Store("sqlite:////proc/no-such-dir/mmgate.db")
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman, store=broken)
    with serving(server) as address, smtplib.SMTP(*address) as client:
        assert (
            client.sendmail(
                "alice@example.org", ["test@example.com"], b"Subject: store down\r\n\r\nx\r\n"
            )
            == {}
        )
    assert server.recorder is not None and server.recorder.healthy is False
    assert len(mm.drain("in")) == 1


# -- a real gunicorn ----------------------------------------------------------


@pytest.fixture
def gunicorn_api(mailman_env: MailmanEnv, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmgate",
            "api",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--mailman-config",
            str(mailman_env.config),
            "--var-dir",
            str(tmp_path / "var"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MMGATE_API_TOKEN": TOKEN},
    )
    wait_for_port(port, proc, "mmgate api")
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_mmgate_api_serves_through_gunicorn(gunicorn_api: int):
    import json
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{gunicorn_api}"
    with pytest.raises(urllib.error.HTTPError) as degraded:  # no SMTP side here: 503
        urllib.request.urlopen(base + "/v1/health", timeout=10)
    assert degraded.value.code == 503
    assert json.load(degraded.value)["mailman"]["lists"] >= 5
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/v1/lists", timeout=10)
    assert info.value.code == 401
    request = urllib.request.Request(base + "/v1/lists/test@example.com", headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.load(resp)["list_id"] == "test.example.com"


def test_api_refuses_a_network_address_without_credentials(mailman_env: MailmanEnv):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmgate",
            "api",
            "--bind",
            "0.0.0.0:8026",
            "--mailman-config",
            str(mailman_env.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MMGATE_API_TOKEN"},
    )
    assert done.returncode == 2
    assert done.stderr == (
        "mmgate: error: the API on 0.0.0.0:8026 would be open to the network: "
        "set [api] token or MMGATE_API_TOKEN, or bind to a loopback address\n"
    )


# -- the OpenAPI document, checked against the app by schemathesis ------------

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402


def test_openapi_document_matches_what_the_app_does(mm: MailmanEnv, store_url: str) -> None:
    """Every operation of the document, driven by schemathesis's generated
    requests; every response checked against the document (status codes,
    content type, schema, auth). Called directly: its pytest plugin does not
    run on this pytest."""
    app = create_app(
        ApiSettings(store_url=store_url, backend=mm.mailman, token=TOKEN, snapshot_ttl=60.0)
    )
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app, headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    # every operation but the document's own, which schemathesis leaves out
    assert sorted(op.label for op in operations) == [
        "DELETE /v1/lists/{name}/pause",
        "GET /v1/health",
        "GET /v1/lists",
        "GET /v1/lists/{name}",
        "GET /v1/messages",
        "GET /v1/route",
        "GET /v1/stats",
        "HEAD /v1/health",
        "POST /v1/refresh",
        "PUT /v1/lists/{name}/pause",
    ]

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Any) -> None:
            # /v1/health answers 503 on purpose when degraded (no SMTP side
            # here), as its document says; every other 5xx is a failure.
            excluded = [not_a_server_error] if case.operation.path == "/v1/health" else []
            case.call_and_validate(headers=AUTH, excluded_checks=excluded)

        check()


def test_refresh_reaches_a_running_smtp_server(mm, api, store_url):
    server = MailmanProxy(
        ("127.0.0.1", 0), None, mailman=mm.mailman, store=Store(store_url), refresh_interval=3600
    )  # no periodic re-read: only the request
    with serving(server) as address:
        mm.create_list("late@example.com")
        try:
            assert rcpt(address, "late@example.com")[0] == 550
            assert api.simulate_post("/v1/refresh", headers=AUTH).status_code == 202
            deadline = time.monotonic() + 3
            while rcpt(address, "late@example.com")[0] != 250:
                assert time.monotonic() < deadline, "refresh not seen within 3 s"
                time.sleep(0.1)
        finally:
            mm.delete_list("late@example.com")


def test_journal_retention_is_bounded(store_url):
    store = Store(store_url)
    entry = {
        "time": 0.0,
        "client": "c",
        "sender": "s",
        "size": 1,
        "message_id": None,
        "queue_id": "Q",
        "outcome": 250,
        "reply": "250",
        "lists": " ",
        "recipients": [],
    }
    store.apply("gw.example", {}, [{**entry, "queue_id": f"Q{n}"} for n in range(30)])
    store.prune(keep=10)
    total, entries = store.messages(limit=100, offset=0)
    assert total == 10 and entries[0]["queue_id"] == "Q29" and entries[-1]["queue_id"] == "Q20"


def test_gunicorn_runs_create_app_from_the_environment(mailman_env: MailmanEnv, tmp_path: Path):
    import json
    import urllib.request

    cfg = tmp_path / "mmgate.toml"
    cfg.write_text(
        f'[mailman]\nconfig = "{mailman_env.config}"\n'
        f'[api]\nstore = "sqlite:///{tmp_path / "store.db"}"\ntoken = "{TOKEN}"\n'
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--no-control-socket",
            "mmgate.api:create_app()",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MMGATE_CONFIG": str(cfg)},
    )
    try:
        wait_for_port(port, proc, "gunicorn 'mmgate.api:create_app()'")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/route?address=test-leave@example.com", headers=AUTH
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.load(resp)["subaddress"] == "leave"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_two_stalled_http_clients_do_not_stall_the_api(gunicorn_api: int):
    import urllib.request

    stalled = []
    for _ in range(2):  # requests that never finish their headers
        s = socket.create_connection(("127.0.0.1", gunicorn_api))
        s.sendall(b"GET /v1/lists HTTP/1.1\r\nHost: x\r\n")
        stalled.append(s)
    try:
        started = time.monotonic()
        request = urllib.request.Request(
            f"http://127.0.0.1:{gunicorn_api}/v1/lists/test@example.com", headers=AUTH
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 3
    finally:
        for s in stalled:
            s.close()
