"""The ratelimit plugin: token buckets in the shared store, over real SMTP."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from mmgate_plugins.ratelimit import RateLimit, parse_rate

from mmgate.gateway import MailmanProxy
from mmgate.store import Store
from tests.harness import RawClient, Recorder, serving
from tests.mailman_env import MailmanEnv


def _mail(address: tuple[str, int], sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        return client.mail(sender)


def test_sender_limit_is_450_and_shared_by_gateways_on_one_store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    one = Recorder(
        ("127.0.0.1", 0), None, plugins=[RateLimit(sender="3/hour", exempt=[], store=url)]
    )
    two = Recorder(
        ("127.0.0.1", 0), None, plugins=[RateLimit(sender="3/hour", exempt=[], store=url)]
    )
    with serving(one) as a, serving(two) as b:
        assert _mail(a, "busy@example.com")[0] == 250
        assert _mail(b, "busy@example.com")[0] == 250
        assert _mail(a, "busy@example.com")[0] == 250
        assert _mail(b, "busy@example.com") == (
            450,
            b"4.7.1 Sender rate limit exceeded, try again later",
        )
        assert _mail(a, "busy@example.com")[0] == 450
        assert _mail(a, "calm@example.com")[0] == 250  # a bucket per sender


def test_client_limit_is_a_421_greeting_and_loopback_is_exempt_by_default(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    limited = Recorder(
        ("127.0.0.1", 0), None, plugins=[RateLimit(client="1/hour", exempt=[], store=url)]
    )
    with serving(limited) as address:
        with RawClient(address) as c:
            assert c.reply()[0] == 220
        with RawClient(address) as c:
            assert c.reply() == (
                421,
                "4.7.0 Too many connections from your address, try again later",
            )
    exempt = Recorder(("127.0.0.1", 0), None, plugins=[RateLimit(client="1/hour", store=url)])
    with serving(exempt) as address:
        for _ in range(3):
            with RawClient(address) as c:
                assert c.reply()[0] == 220


def test_list_limit_counts_posts_to_a_list_not_its_request_address(mm: MailmanEnv, tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'mmgate.db'}")
    server = MailmanProxy(
        ("127.0.0.1", 0),
        None,
        mailman=mm.mailman,
        store=store,
        plugins=[RateLimit(list="2/hour", exempt=[])],
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        for _ in range(2):
            client.mail("alice@example.org")
            assert client.rcpt("test@example.com")[0] == 250
            client.rset()
        client.mail("alice@example.org")
        assert client.rcpt("test@example.com") == (
            450,
            b"4.7.1 List test.example.com takes no more posts now, try again later",
        )
        assert client.rcpt("test-request@example.com")[0] == 250
        assert client.rcpt("foo-bar@example.com")[0] == 250  # another list's bucket


def test_a_store_that_cannot_be_reached_limits_nobody(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'limits.db'}"
    server = Recorder(
        ("127.0.0.1", 0), None, plugins=[RateLimit(sender="1/hour", exempt=[], store=url)]
    )
    with serving(server) as address:
        for _ in range(3):
            assert _mail(address, "busy@example.com")[0] == 250


@pytest.mark.parametrize("text", ["0/minute", "5/fortnight", "many", "5 per minute"])
def test_a_rate_that_is_not_n_per_period_is_refused(text: str):
    with pytest.raises(ValueError, match="is not N/second, N/minute, N/hour or N/day"):
        parse_rate(text, "sender")


def test_without_any_store_the_plugin_says_so_when_attached():
    with pytest.raises(ValueError, match="ratelimit needs a store"):
        Recorder(("127.0.0.1", 0), None, plugins=[RateLimit(sender="1/hour")])


def test_token_bucket_refills_at_its_rate(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'limits.db'}")
    rate = parse_rate("2/minute", "sender")
    assert rate is not None
    assert store.take("k", *rate, now=1000.0)
    assert store.take("k", *rate, now=1000.0)
    assert not store.take("k", *rate, now=1010.0)  # 1/3 of a token back: not enough
    assert store.take("k", *rate, now=1030.0)  # 30 s: one token back
    assert not store.take("k", *rate, now=1030.0)
