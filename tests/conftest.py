"""Session fixtures: one real Mailman core for every test that needs one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.mailman_env import MailmanEnv, make_env


@pytest.fixture(scope="session")
def mailman_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanEnv]:
    env = make_env(tmp_path_factory.mktemp("mailman"))
    yield env
    env.capture.controller.stop()


@pytest.fixture
def mm(mailman_env: MailmanEnv) -> Iterator[MailmanEnv]:
    """The session's Mailman with empty queues before and after the test."""
    mailman_env.drain_all()
    yield mailman_env
    mailman_env.drain_all()


@pytest.fixture(scope="module")
def lmtp_runner(mailman_env: MailmanEnv) -> Iterator[Any]:
    """Mailman's own LMTP runner, started as Mailman starts it."""
    with mailman_env.runner("lmtp:0:1", mailman_env.lmtp_port) as proc:
        yield proc


@pytest.fixture(scope="session")
def postgresql() -> Iterator[Any]:
    """One PostgreSQL server (Debian's package) for the session's tests."""
    from mmgate.mailman.embedded import free_port
    from tests import postgres

    if not postgres.available():
        pytest.skip("Debian's postgresql is not installed (tests/install_packages.sh)")
    with postgres.PostgreSQL(free_port()) as server:
        yield server
