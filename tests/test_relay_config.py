"""Relay control from the file, the environment and the flags."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from mmgate.config import ConfigError, read_config, relay_policy
from mmgate.relay.policy import DEFAULT_NETWORKS, RelayPolicy
from tests.test_cli_debugging import running, stop
from tests.upstream import Upstream


def test_default_policy_is_loopback_only_and_no_open_domains():
    policy = relay_policy(read_config(None), {})
    assert policy.networks == DEFAULT_NETWORKS and policy.domains == frozenset()
    assert policy.permits("127.0.0.1", "x@example.org")
    assert policy.permits("::1", "x@example.org")
    assert not policy.permits("192.0.2.7", "x@example.org")
    assert not policy.permits("::ffff:192.0.2.7", "x@example.org")


def test_later_sources_win(tmp_path: Path):
    cfg = tmp_path / "mmgate.toml"
    cfg.write_text('[relay]\nnetworks = ["192.0.2.0/24"]\ndomains = ["file.example"]\n')
    file_only = relay_policy(read_config(str(cfg)), {})
    assert file_only.permits("192.0.2.9", "a@b.c") and not file_only.permits("127.0.0.1", "a@b.c")
    env = relay_policy(read_config(str(cfg)), {"MMGATE_RELAY_NETWORKS": "198.51.100.0/24"})
    assert env.permits("198.51.100.1", "a@b.c") and not env.permits("192.0.2.9", "a@b.c")
    assert env.domain_is_open("x@file.example")
    flags = relay_policy(
        read_config(str(cfg)),
        {"MMGATE_RELAY_NETWORKS": "198.51.100.0/24"},
        networks="",
        domains="flag.example",
    )
    assert flags == RelayPolicy((), frozenset({"flag.example"}))


@pytest.mark.parametrize(
    "text,message",
    [
        ('[relay]\nnetworks = ["10.1.2.300"]\n', "relay.networks: '10.1.2.300' is not a network"),
        ("[relay]\nnetwork = []\n", "relay.network: unknown key"),
        ("[relais]\n", "[relais]: unknown section"),
        ('[relay]\ndomains = "example.org"\n', "relay.domains: must be a list of strings"),
        ("[relay\n", "not valid TOML"),
    ],
)
def test_bad_file_names_the_file_and_key(tmp_path: Path, text: str, message: str):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        relay_policy(read_config(str(cfg)), {})
    assert str(info.value).startswith(str(cfg)) and message in str(info.value)


def test_bad_environment_names_the_variable():
    with pytest.raises(ConfigError, match=r"^MMGATE_RELAY_NETWORKS: 'x' is not a network"):
        relay_policy(read_config(None), {"MMGATE_RELAY_NETWORKS": "127.0.0.1, x"})


def test_malformed_network_on_the_command_line_is_one_line_and_exit_2():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmgate",
            "smtpd",
            "-n",
            "-c",
            "PureProxy",
            "--relay-networks",
            "10.0.0.0/33",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "mmgate: error: --relay-networks: '10.0.0.0/33' is not a network "
        "(ADDRESS or ADDRESS/PREFIX)\n"
    )


def test_mmgate_smtpd_pureproxy_relays_like_python_m_smtpd_did():
    with Upstream() as up, running("-c", "PureProxy", remote=up.address) as (proc, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            assert (
                client.sendmail("a@example.com", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
                == {}
            )
        assert stop(proc)[0] == 0
    assert up.handler.messages[0].rcpt_tos == ["b@example.org"]


def test_environment_is_honoured_by_mmgate_smtpd():
    env = {"MMGATE_RELAY_NETWORKS": "192.0.2.0/24"}
    with Upstream() as up, running("-c", "PureProxy", remote=up.address, env=env) as (proc, port):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.mail("a@example.com")
            assert client.rcpt("b@example.org") == (554, b"5.7.1 Relay access denied")
        stop(proc)


def test_ipv4_mapped_loopback_counts_as_loopback_for_policy_and_connection_caps():
    from mmgate.networks import LOOPBACK, in_networks

    assert in_networks("::ffff:127.0.0.1", LOOPBACK)
    assert RelayPolicy().client_may_relay("::ffff:127.0.0.1")
    assert not in_networks("::ffff:192.0.2.1", LOOPBACK)
    assert not in_networks("not-an-ip", LOOPBACK)
