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
        "mmgate: error: Mailman cannot be used: "
        f"{tmp_path / 'var' / 'mailman.cfg'}: no such Mailman configuration file\n"
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
