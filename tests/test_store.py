"""The shared store, on SQLite and on a real PostgreSQL server.

Several gateways write to one store: what is each one's (counters,
heartbeat, journal name) stays apart, what is common (pauses, rate-limit
buckets) is common, and a store that goes away costs no mail and, when it
comes back, no journal.
"""

from __future__ import annotations

import itertools
import logging
import smtplib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
)

from mmgate.gateway import MailmanProxy
from mmgate.mailman.embedded import free_port
from mmgate.store import Recorder, Store
from tests import postgres
from tests.harness import serving
from tests.mailman_env import MailmanEnv

pytestmark = pytest.mark.servers

_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mmgate.db'}"
    server = request.getfixturevalue("postgresql")
    return str(server.database(f"store_{next(_names)}"))


def entry(queue_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "time": 1.0,
        "client": "192.0.2.7",
        "sender": "a@example.org",
        "size": 10,
        "message_id": f"<{queue_id}@example.org>",
        "queue_id": queue_id,
        "outcome": 250,
        "reply": "250 2.0.0 Ok",
        "lists": " test.example.com ",
        "recipients": [{"address": "test@example.com", "route": "list", "outcome": 250}],
        **extra,
    }


def test_stats_sum_every_gateway_and_keep_each_apart(store_url):
    a, b = Store(store_url), Store(store_url)  # two hosts: two engines
    a.started("gw-a")
    b.started("gw-b")
    a.apply("gw-a", {"messages_accepted": 2, "bytes": 3_000_000_000}, [entry("QA")])
    b.apply("gw-b", {"messages_accepted": 5}, [entry("QB")])
    stats = b.stats()
    assert stats["total"] == {"messages_accepted": 7, "bytes": 3_000_000_000}
    assert stats["gateways"]["gw-a"]["total"]["messages_accepted"] == 2
    assert stats["gateways"]["gw-b"]["total"] == {"messages_accepted": 5}
    _, journal = a.messages(limit=10, offset=0)
    assert {(e["queue_id"], e["gateway"]) for e in journal} == {("QA", "gw-a"), ("QB", "gw-b")}


def test_a_gateway_restart_zeroes_only_its_own_since_start(store_url):
    store = Store(store_url)
    store.started("gw-a")
    store.started("gw-b")
    store.apply("gw-a", {"connections": 4}, [])
    store.apply("gw-b", {"connections": 6}, [])
    store.started("gw-b")
    stats = store.stats()
    assert stats["since_start"] == {"connections": 4}
    assert stats["total"] == {"connections": 10}


def test_a_pause_set_through_one_store_reaches_another_gateways_recorder(store_url):
    api = Store(store_url)
    recorder = Recorder(Store(store_url), gateway="gw-b")
    recorder.poll()
    assert recorder.paused == frozenset()
    api.set_paused("test.example.com", True)
    recorder.poll()
    assert recorder.paused == {"test.example.com"}
    assert "gw-b" in api.gateways()  # the poll is also its heartbeat


def test_gateways_sharing_a_bucket_never_spend_more_than_it_holds(store_url):
    stores = [Store(store_url), Store(store_url)]
    taken: list[bool] = []
    lock = threading.Lock()

    def spend(store: Store) -> None:
        for _ in range(15):
            ok = store.take("list:test.example.com", 20, 0.0001, now=1000.0)
            with lock:
                taken.append(ok)

    threads = [threading.Thread(target=spend, args=(stores[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 60 and taken.count(True) == 20


def test_a_nul_in_a_message_id_is_journalled_visibly(store_url):
    store = Store(store_url)
    store.apply("gw", {}, [entry("QN", message_id="<a\x00b@example.org>", sender="x" * 5000)])
    _, [got] = store.messages(limit=1, offset=0)
    assert got["message_id"] == "<a\ufffdb@example.org>" and len(got["sender"]) == 5000


def test_a_store_made_by_an_earlier_mmgate_is_brought_to_this_schema(store_url):
    earlier = MetaData()  # the two tables as the single-gateway store made them
    Table(
        "mmgate_counters",
        earlier,
        Column("name", String(200), primary_key=True),
        Column("total", Integer, nullable=False, default=0),
        Column("since_start", Integer, nullable=False, default=0),
    )
    Table(
        "mmgate_journal",
        earlier,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("time", Float, nullable=False),
        *(Column(name, String(1000)) for name in ("client", "sender", "message_id", "reply")),
        Column("size", Integer),
        Column("queue_id", String(50)),
        Column("outcome", Integer),
        Column("lists", String(2000)),
        Column("recipients", Text),
    )
    engine = create_engine(store_url)
    earlier.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO mmgate_counters VALUES ('messages_accepted', 41, 3)"))
    engine.dispose()
    store = Store(store_url)
    store.apply("gw-a", {"messages_accepted": 1}, [entry("QU")])
    assert store.stats()["total"] == {"messages_accepted": 42}
    assert store.messages(limit=1, offset=0)[1][0]["gateway"] == "gw-a"


def test_an_entry_the_store_refuses_is_dropped_alone(postgresql, caplog):
    """PostgreSQL enforces VARCHAR lengths: one bad entry must not hold back
    the batch (it would be retried for ever), and is named in the log."""
    url = postgresql.database(f"store_{next(_names)}")
    recorder = Recorder(Store(url), gateway="gw")
    recorder.count("messages_accepted", 3)
    recorder.record(entry("Q1"))
    recorder.record(entry("Q2", client="c" * 500))
    recorder.record(entry("Q3"))
    with caplog.at_level(logging.ERROR, logger="mmgate.store"):
        recorder.flush()
    total, journal = recorder.store.messages(limit=10, offset=0)
    assert total == 2 and [e["queue_id"] for e in journal] == ["Q3", "Q1"]
    assert recorder.store.stats()["total"] == {"messages_accepted": 3}
    assert "journal entry for queue id Q2 dropped" in caplog.text
    assert recorder.healthy is True


def test_the_backlog_is_written_when_the_store_comes_back(tmp_path):
    """Mail goes on while PostgreSQL is down; the Recorder keeps what it
    could not write and writes it, once, when the server is back."""
    if not postgres.available():
        pytest.skip("Debian's postgresql is not installed (tests/install_packages.sh)")
    server = postgres.PostgreSQL(free_port()).start()
    try:
        recorder = Recorder(Store(server.url), gateway="gw")
        recorder.start()  # a thread, flushing every half second
        recorder.record(entry("BEFORE"))
        recorder.flush()
        server.stop(keep=True)
        for n in range(5):
            recorder.count("messages_accepted")
            recorder.record(entry(f"DOWN{n}"))
        recorder.flush()
        assert recorder.healthy is False
        server.start()
        recorder.stop()  # the last flush
        assert recorder.healthy is True
        total, journal = Store(server.url).messages(limit=10, offset=0)
        assert total == 6 and sorted(e["queue_id"] for e in journal) == [
            "BEFORE", "DOWN0", "DOWN1", "DOWN2", "DOWN3", "DOWN4",
        ]  # fmt: skip
        assert Store(server.url).stats()["total"] == {"messages_accepted": 5}
    finally:
        server.stop()


def test_mail_flows_while_postgresql_is_down_and_its_journal_entry_arrives_after(mm: MailmanEnv):
    if not postgres.available():
        pytest.skip("Debian's postgresql is not installed (tests/install_packages.sh)")
    server = postgres.PostgreSQL(free_port()).start()
    try:
        gateway = MailmanProxy(
            ("127.0.0.1", 0),
            None,
            mailman=mm.mailman,
            store=Store(server.url),
            fqdn="gw-a.example.org",
        )
        with serving(gateway) as address:
            server.stop(keep=True)
            with smtplib.SMTP(*address) as client:
                refused = client.sendmail(
                    "alice@example.org", ["test@example.com"], b"Subject: store down\r\n\r\nx\r\n"
                )
            assert refused == {} and len(mm.drain("in")) == 1  # the post is in Mailman
            recorder = gateway.recorder
            assert recorder is not None
            deadline = time.monotonic() + 10
            while recorder.healthy:  # its next flush finds the store down
                assert time.monotonic() < deadline
                time.sleep(0.1)
            server.start()
            deadline = time.monotonic() + 10
            while not recorder.healthy:
                assert time.monotonic() < deadline, "the backlog was never written"
                time.sleep(0.1)
        _, journal = Store(server.url).messages(limit=10, offset=0)
        assert [(e["gateway"], e["outcome"]) for e in journal] == [("gw-a.example.org", 250)]
    finally:
        server.stop()
