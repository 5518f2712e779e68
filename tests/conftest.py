"""Session fixtures: one real Mailman core for every test that needs one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mailman_env import MailmanEnv, make_env


def pytest_configure(config: pytest.Config) -> None:
    """A module compiled before its source last changed (setup.py's mypyc
    core, built in place by an editable install) would be tested instead
    of the source: stop, and say how to rebuild."""
    if os.environ.get("MMGATE_PURE_PYTHON"):
        return  # the sources are imported, compiled or not
    package = Path(__file__).resolve().parent.parent / "mmgate"
    for compiled in package.rglob("*.so"):
        source = compiled.with_name(compiled.name.split(".")[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            pytest.exit(
                f"{source} changed after it was compiled: rebuild it "
                "(python setup.py build_ext --inplace, or pip install -e .)",
                returncode=4,
            )


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
