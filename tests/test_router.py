"""One routing decision: RCPT, `mmgate route`, `/v1/route` and `mmgate debug`
give the same answer for every address, because they all ask the router."""

from __future__ import annotations

import io
import json
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mmgate import settings
from mmgate.api import ApiSettings, create_app
from mmgate.debug.server import DebugServer
from mmgate.gateway import MailmanProxy
from mmgate.mailman.routing import Snapshot
from mmgate.router import Action, Router
from mmgate.store import PausedLists, Store
from tests.harness import serving
from tests.mailman_env import MailmanEnv
from tests.upstream import Upstream

CORPUS = [
    "test@example.com",  # a list's posting address
    "test-request@alias.example",  # a subaddress, through an alias domain
    "foo-bar-owner@example.com",  # the owner of a hyphenated list
    "nolist@example.com",  # unknown in a Mailman domain
    "bob@elsewhere.example",  # another domain; this client may not relay
    "carol@open.example",  # a domain open to anyone: relayed
    "x@example.com",  # a paused list
]
#: (code, status) each address gets, fresh and with a stale directory
FRESH = {
    "test@example.com": ("list", 250, "2.1.5"),
    "test-request@alias.example": ("list", 250, "2.1.5"),
    "foo-bar-owner@example.com": ("list", 250, "2.1.5"),
    "nolist@example.com": ("reject", 550, "5.1.1"),
    "bob@elsewhere.example": ("reject", 554, "5.7.1"),
    "carol@open.example": ("relay", 250, "2.1.5"),
    "x@example.com": ("paused", 451, "4.2.1"),
}
STALE = {
    **{a: ("stale", 451, "4.3.0") for a, v in FRESH.items() if v[0] in ("list", "paused")},
    "nolist@example.com": ("stale", 451, "4.3.0"),
    "bob@elsewhere.example": ("reject", 554, "5.7.1"),
    "carol@open.example": ("relay", 250, "2.1.5"),
}


def _config(tmp_path: Path, mm: MailmanEnv, upstream: tuple[str, int], stale_after: float) -> Path:
    store_url = f"sqlite:///{tmp_path / 'mmgate.db'}"
    Store(store_url).set_paused("x.example.com", True)
    path = tmp_path / "mmgate.toml"
    path.write_text(
        f'[api]\nstore = "{store_url}"\n'
        f'[mailman]\nconfig = "{mm.config}"\nstale_after = {stale_after}\n'
        f'[relay]\nupstream = "{upstream[0]}:{upstream[1]}"\n'
        'networks = []\ndomains = ["open.example"]\n'
    )
    return path


def _as_answer(entry: dict[str, Any]) -> tuple[str, int, str]:
    reply = entry.get("reply")
    if reply is None:
        return entry["action"], 250, "2.1.5"
    return entry["action"], reply["code"], reply["status"]


def _rcpt(gw: settings.GatewaySettings, mm: MailmanEnv) -> dict[str, tuple[int, str]]:
    server = MailmanProxy(
        ("127.0.0.1", 0),
        gw.upstream,
        mailman=mm.mailman,
        store=Store(gw.store_url or ""),
        relay_policy=gw.policy,
        stale_after=gw.stale_after,
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        out = {}
        for rcpt in CORPUS:
            code, text = client.rcpt(rcpt)
            out[rcpt] = (code, text.decode().split()[0])
        return out


def _route_cli(config: Path) -> dict[str, tuple[str, int, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "mmgate", "route", "--json", "--config", str(config), *CORPUS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {e["address"]: _as_answer(e) for e in json.loads(done.stdout)}


def _api(gw: settings.GatewaySettings, mm: MailmanEnv) -> dict[str, tuple[str, int, str]]:
    api_settings = ApiSettings.from_gateway(gw)
    api_settings.backend = mm.mailman
    client = falcon.testing.TestClient(create_app(api_settings))
    out = {}
    for address in CORPUS:
        got = client.simulate_get("/v1/route", params={"address": address})
        assert got.status_code == 200
        out[address] = _as_answer(got.json)
    return out


def _debug(gw: settings.GatewaySettings, mm: MailmanEnv) -> dict[str, tuple[str, int, str]]:
    out = io.StringIO()
    server = DebugServer(
        ("127.0.0.1", 0),
        gw.upstream,
        mailman=mm.mailman,
        relay_policy=gw.policy,
        stale_after=gw.stale_after,
        output_format="json",
        out=out,
        paused=PausedLists(gw.store_url),
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail("sender@example.org", CORPUS, b"Subject: corpus\r\n\r\nHi.\r\n")
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    return {e["address"]: _as_answer(e) for e in record["recipients"]}


@pytest.mark.parametrize(("stale_after", "expected"), [(60.0, FRESH), (1e-6, STALE)])
def test_rcpt_route_api_and_debug_give_one_answer_per_address(
    mm: MailmanEnv, tmp_path: Path, stale_after: float, expected: dict[str, Any]
):
    with Upstream() as up:
        config = _config(tmp_path, mm, up.address, stale_after)
        gw = settings.load({"config": str(config)})
        rcpt = _rcpt(gw, mm)
        route = _route_cli(config)
        api = _api(gw, mm)
        debug = _debug(gw, mm)
    assert route == expected
    assert api == expected
    assert debug == expected
    assert rcpt == {a: (code, status) for a, (_, code, status) in expected.items()}


def _snapshot(taken_at: float) -> Snapshot:
    return Snapshot(
        lists={"test@example.com": "test.example.com"},
        domains=frozenset({"example.com"}),
        taken_at=taken_at,
    )


def test_router_is_a_function_of_address_client_and_time():
    router = Router(_snapshot(1000.0), paused=lambda: {"test.example.com"})
    assert router.decide("test@example.com", client="127.0.0.1", now=1001.0).action is (
        Action.PAUSED
    )
    stale = router.decide("test@example.com", client="127.0.0.1", now=1061.0)
    assert stale.action is Action.STALE and str(stale.reply) == (
        "451 4.3.0 Mailman's list directory is unavailable, try later"
    )
    # relayed addresses do not depend on Mailman, so never go stale
    relay = router.decide("a@elsewhere.example", client="127.0.0.1", now=1061.0)
    assert relay.action is Action.REJECT and relay.reply is not None
    assert relay.reply.code == 451  # no upstream configured, and a trusted client


def test_malformed_address_is_refused_as_rcpt_would_refuse_it():
    decision = Router(_snapshot(0.0)).verdict("not an address", client="127.0.0.1")
    assert decision.as_dict() == {
        "address": "not an address",
        "action": "reject",
        "reply": {"code": 501, "status": "5.1.3", "text": "Error: bad recipient address syntax"},
    }
