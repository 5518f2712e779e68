"""Building settings reads and checks; it writes nothing. A bad value is one
line naming its file and key; only a serving command makes files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmgate import runtime, settings
from mmgate.config import ConfigError
from mmgate.gateway import MailmanProxy
from mmgate.store import Store
from tests.mailman_env import MailmanEnv


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_loading_settings_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # the default var directory is ./var
    gw = settings.load({})
    assert gw.var_dir == tmp_path / "var"
    assert gw.mailman_config_path == tmp_path / "var" / "mailman.cfg"
    assert gw.store_url == f"sqlite:///{tmp_path / 'var' / 'mmgate.db'}"
    assert _files(tmp_path) == []
    gw.prepare()  # what serve does before it binds
    assert {"var", "var/mailman.cfg"} <= set(_files(tmp_path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[mailman]\nrefresh_interval = -5\n",
            "mailman.refresh_interval: must be above 0 and at most 3600, not -5",
        ),
        ("[mailman]\nrefresh_interval = 0\n", "must be above 0 and at most 3600, not 0"),
        ("[mailman]\nstale_after = 1e9\n", "mailman.stale_after: must be above 0"),
        ("[api]\nworkers = 0\n", "api.workers: must be above 0 and at most 64, not 0"),
        ('[api]\nbind = "nowhere"\n', "api.bind: must be HOST:PORT, not 'nowhere'"),
        ('[mailman]\nspool_sync = "never"\n', 'must be "batch" or "file", not \'never\''),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
):
    path = tmp_path / "mmgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        settings.load({"config": str(path)})
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_route_with_no_mailman_home_says_so_and_creates_nothing(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "mmgate", "route", "test@example.com"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"mmgate: error: {tmp_path / 'var' / 'mailman.cfg'}: no Mailman home "
        "(mmgate serve creates it; or --var-dir, MMGATE_VAR_DIR, --mailman-config)\n"
    )
    assert _files(tmp_path) == []


def test_mailmanproxy_close_before_start_is_harmless(mm: MailmanEnv, tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'mmgate.db'}")
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman, store=store)

    async def close() -> None:
        await server.close(timeout=0)

    runtime.run(close())
    assert server.shutting_down


def test_the_embedded_home_follows_the_listen_address_and_picks_free_mailman_ports(tmp_path):
    from mmgate.mailman.embedded import ensure_home, keep_in_step

    cfg = ensure_home(tmp_path / "var", smtp_port=8025)
    text = cfg.read_text()
    lmtp = int(text.split("lmtp_port: ")[1].split()[0])
    rest = int(text.split("[webservice]")[1].split("port: ")[1].split()[0])
    assert lmtp not in (8024, 8025) and rest != 8001
    # a later start on another port: Mailman's outgoing host follows it
    ensure_home(tmp_path / "var", smtp_host="127.0.0.2", smtp_port=9125, rest_port=9101)
    text = cfg.read_text()
    assert "smtp_host: 127.0.0.2\n" in text and "smtp_port: 9125\n" in text
    assert "port: 9101\n" in text.split("[webservice]")[1]
    assert f"lmtp_port: {lmtp}\n" in text  # not given: left as it was
    assert (cfg.stat().st_mode & 0o777) == 0o600
    # a mailman.cfg someone else wrote is never touched
    theirs = tmp_path / "theirs.cfg"
    theirs.write_text("[mta]\nsmtp_port: 25\n")
    assert keep_in_step(theirs, {("mta", "smtp_port"): "8025"}) is False
    assert theirs.read_text() == "[mta]\nsmtp_port: 25\n"


def test_mmgate_config_prints_the_settings_in_force_as_a_file_it_reads_back(tmp_path):
    import subprocess
    import sys

    from mmgate import config
    from mmgate.settings import load

    conf = tmp_path / "mmgate.toml"
    conf.write_text(
        '[smtp]\nhostname = "mx.example.org"\nmax_connections = 7\n'
        '[mailman]\nurl = "http://mailman.test:8001"\nlmtp = "127.0.0.1:8024"\n'
        'password = "hunter2"\n[api]\nstore = "postgresql://gw:s3cret@db.test/mmgate"\n'
    )
    env = {"MMGATE_API_TOKEN": "t0ken", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmgate",
            "config",
            "--config",
            str(conf),
            "--smtputf8",
            "--message-size",
            "1000",
            "--lmtp",
            "127.0.0.1:9024",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    for secret in ("hunter2", "s3cret", "t0ken"):
        assert secret not in done.stdout
    assert 'store = "postgresql://gw:********@db.test/mmgate"' in done.stdout
    printed = tmp_path / "printed.toml"
    printed.write_text(done.stdout)
    config.read_config(str(printed))  # every key is one the file may hold
    again = load({"config": str(printed)}, environ={}).session
    assert (again.hostname, again.max_connections, again.message_size, again.smtputf8) == (
        "mx.example.org",
        7,
        1000,
        True,
    )
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[smtp]\nmax_connections = 0\n", "smtp.max_connections: must be above 0"),
        ("[smtp]\nmessage_size = 1.5\n", "smtp.message_size: must be a size limit"),
        ('[smtp]\nhostname = "no host"\n', "is not a host name"),
        ("[smtp]\nidle_timeout = -1\n", "smtp.idle_timeout: must be above 0"),
        ('[smtp]\nsmtputf8 = "yes"\n', "smtp.smtputf8: must be true or false"),
    ],
)
def test_a_bad_session_setting_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    from mmgate.config import ConfigError
    from mmgate.settings import load

    conf = tmp_path / "mmgate.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load({"config": str(conf)}, environ={})
    assert str(conf) in str(caught.value) and "\n" not in str(caught.value)
