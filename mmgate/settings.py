"""The gateway's settings, built from flags, the environment and the TOML file.

Building settings only reads and checks: a bad value is one line naming the
file and key (or the flag, or the variable), and nothing is written. What a
server needs on disk (the embedded Mailman home, the store's directory) is
made by :meth:`GatewaySettings.prepare`, which only the serving commands
call. This module imports no server, channel, gateway or CLI, so the admin
API (inside gunicorn workers) can build its settings from here.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgate import config
from mmgate.config import STALE_AFTER, ConfigError
from mmgate.networks import ALL_NETWORKS, LOOPBACK, Network
from mmgate.relay.policy import RelayConfigError, RelayPolicy, parse_networks
from mmgate.relay.upstream import TLS_POLICIES, UpstreamTLS
from mmgate.smtp.limits import (
    COMMAND_TIMEOUT,
    DATA_SIZE_DEFAULT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
)

if TYPE_CHECKING:
    from mmgate.mailman.backend import MailmanBackend

DEFAULT_LISTEN = "127.0.0.1:8025"
DEFAULT_API_BIND = "127.0.0.1:8026"

#: The flags :func:`load` reads; a plain mapping may give any of them.
FLAGS = (
    "config",
    "relay",
    "relay_networks",
    "relay_domains",
    "mailman_config",
    "var_dir",
    "mailman_url",
    "mailman_user",
    "mailman_lmtp",
    "spool_sync",
    "no_store",
)


@dataclass(frozen=True)
class RemoteSettings:
    """A Mailman on another host: its REST API and its LMTP runner."""

    url: str
    user: str
    password: str
    lmtp: tuple[str, int]


@dataclass(frozen=True)
class SessionSettings:
    """What each SMTP session of ``mmgate serve`` is held to (``[smtp]``)."""

    #: the name in the greeting and in Received: lines; None: the host's FQDN
    hostname: str | None = None
    #: the SIZE limit (RFC 1870); 0: none
    message_size: int = DATA_SIZE_DEFAULT
    idle_timeout: float = IDLE_TIMEOUT
    command_timeout: float = COMMAND_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    #: RFC 6531 SMTPUTF8 offered (off by default, as in smtpd and Mailman's
    #: LMTP runner: an upstream without it could not take such mail)
    smtputf8: bool = False
    #: read a PROXY header (v1 or v2) from the balancers in proxy_networks
    proxy_protocol: bool = False
    proxy_networks: tuple[Network, ...] = LOOPBACK

    def server_kwargs(self) -> dict[str, Any]:
        """The SMTPServer keyword arguments these settings are."""
        return {
            "proxy_protocol": self.proxy_protocol,
            "proxy_networks": self.proxy_networks,
            "fqdn": self.hostname,
            "data_size_limit": self.message_size,
            "idle_timeout": self.idle_timeout,
            "command_timeout": self.command_timeout,
            "max_connections": self.max_connections,
            "max_connections_per_client": self.max_connections_per_client,
            "enable_SMTPUTF8": self.smtputf8,
        }


#: ``[smtp]`` key -> (flag, kind, lowest allowed, highest allowed)
SESSION_KEYS: dict[str, tuple[str, type, float, float]] = {
    "message_size": ("--message-size", int, 0, 2**40),
    "idle_timeout": ("--idle-timeout", float, 1, 86400),
    "command_timeout": ("--command-timeout", float, 1, 86400),
    "max_connections": ("--max-connections", int, 1, 1_000_000),
    "max_connections_per_client": ("--max-connections-per-client", int, 1, 1_000_000),
}


def _session(cfg: config.ConfigFile, args: argparse.Namespace) -> SessionSettings:
    values: dict[str, Any] = {}
    for key, (flag, kind, low, high) in SESSION_KEYS.items():
        value, where = config.pick(cfg, "smtp", key, getattr(args, key, None), flag, None)
        if value is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}: must be a whole number, not {value!r}")
        number = _number(value, where, above=low - 1 if kind is int else 0, at_most=high)
        values[key] = int(number) if kind is int else number
    hostname, where = config.pick(
        cfg, "smtp", "hostname", getattr(args, "hostname", None), "--hostname", None
    )
    if hostname is not None:
        labels = hostname.rstrip(".").split(".")
        if not all(
            label and len(label) < 64 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels
        ):
            raise ConfigError(f"{where}: {hostname!r} is not a host name")
        values["hostname"] = hostname
    smtputf8, _ = config.pick(
        cfg, "smtp", "smtputf8", getattr(args, "smtputf8", None), "--smtputf8", None
    )
    if smtputf8 is not None:
        values["smtputf8"] = bool(smtputf8)
    proxy, _ = config.pick(
        cfg, "smtp", "proxy_protocol", getattr(args, "proxy_protocol", None), "", None
    )
    if proxy is not None:
        values["proxy_protocol"] = bool(proxy)
    networks, networks_where = config.pick(
        cfg,
        "smtp",
        "proxy_networks",
        getattr(args, "proxy_networks", None),
        "--proxy-networks",
        None,
    )
    if networks is not None:
        try:
            values["proxy_networks"] = parse_networks(networks, source=networks_where)
        except RelayConfigError as exc:
            raise ConfigError(str(exc)) from None
    return SessionSettings(**values)


TLS_REQUIRE = ("relay", "none", "all")


@dataclass(frozen=True)
class TLSSettings:
    """``[tls]``: the certificate (None: a self-signed one made under
    VAR/tls/ on first start), STARTTLS, an implicit-TLS listener, and who
    must use TLS before MAIL."""

    cert: Path | None = None
    key: Path | None = None
    starttls: bool = True
    listen: tuple[str, int] | None = None
    require: str = "relay"

    def required_networks(self, policy: RelayPolicy) -> tuple[Network, ...]:
        """``relay``: the relay networks but loopback (Mailman on this host
        hands over its copies in plaintext); ``all``: everyone."""
        if self.require == "none":
            return ()
        if self.require == "all":
            return ALL_NETWORKS
        return tuple(
            n
            for n in policy.networks
            if not any(n.version == lo.version and n.overlaps(lo) for lo in LOOPBACK)
        )


def _tls(cfg: config.ConfigFile, args: argparse.Namespace) -> TLSSettings:
    cert, cert_where = config.pick(
        cfg, "tls", "cert", getattr(args, "tls_cert", None), "--tls-cert", None
    )
    key, key_where = config.pick(
        cfg, "tls", "key", getattr(args, "tls_key", None), "--tls-key", None
    )
    if (cert is None) != (key is None):
        where = cert_where if cert is not None else key_where
        raise ConfigError(f"{where}: a certificate needs its key (--tls-cert with --tls-key)")
    starttls, _ = config.pick(
        cfg, "tls", "starttls", getattr(args, "starttls", None), "--starttls", True
    )
    require, require_where = config.pick(
        cfg, "tls", "require", getattr(args, "tls_require", None), "--tls-require", "relay"
    )
    if require not in TLS_REQUIRE:
        raise ConfigError(
            f"{require_where}: must be one of {', '.join(TLS_REQUIRE)}, not {require!r}"
        )
    return TLSSettings(
        cert=Path(cert).resolve() if cert else None,
        key=Path(key).resolve() if key else None,
        starttls=bool(starttls),
        listen=_address(cfg, args, "tls", "listen", "tls_listen"),
        require=require,
    )


def _upstream_tls(cfg: config.ConfigFile, args: argparse.Namespace) -> UpstreamTLS:
    policy, where = config.pick(
        cfg, "relay", "tls", getattr(args, "relay_tls", None), "--relay-tls", "may"
    )
    if policy not in TLS_POLICIES:
        raise ConfigError(f"{where}: must be one of {', '.join(TLS_POLICIES)}, not {policy!r}")
    ca, ca_where = config.pick(
        cfg, "relay", "tls_ca", getattr(args, "relay_tls_ca", None), "--relay-tls-ca", None
    )
    if ca is not None and not Path(ca).is_file():
        raise ConfigError(f"{ca_where}: {ca}: no such file")
    name, _ = config.pick(cfg, "relay", "tls_name", None, "", None)
    return UpstreamTLS(policy, str(Path(ca).resolve()) if ca else None, name)


@dataclass(frozen=True)
class GatewaySettings:
    listen: tuple[str, int]
    upstream: tuple[str, int] | None
    policy: RelayPolicy
    var_dir: Path
    #: a Mailman configuration named by flag or file; None: the embedded one
    mailman_config: Path | None
    refresh_interval: float
    spool_sync: str
    #: how old a Mailman snapshot may grow before list verdicts turn 451
    stale_after: float = STALE_AFTER
    remote: RemoteSettings | None = None
    store_url: str | None = None
    api_token: str | None = None
    api_bind: str = DEFAULT_API_BIND
    api_workers: int = 2
    #: the ``[[plugins]]`` tables, in order (built by mmgate.plugins.load)
    plugins: tuple[config.PluginSpec, ...] = ()
    #: where postmaster mail goes (RFC 5321 4.5.1); None: VAR/postmaster/
    postmaster: str | None = None
    #: where the LMTP listener (RFC 2033) listens; None: no LMTP
    lmtp: tuple[str, int] | None = None
    #: where Postfix's lookup tables are answered (socketmap); None: nowhere
    socketmap: tuple[str, int] | None = None
    #: the embedded Mailman's own ports (LMTP runner, REST API); None: free
    #: ones when the home is made, and left as they are afterwards
    mailman_lmtp_port: int | None = None
    mailman_rest_port: int | None = None
    #: start and supervise Mailman's runners (the embedded home only)
    runners: bool = True
    #: what each SMTP session is held to
    session: SessionSettings = field(default_factory=SessionSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    #: TLS with the upstream relay (Postfix's smtp_tls_security_level)
    upstream_tls: UpstreamTLS = field(default_factory=UpstreamTLS)

    @property
    def mailman_config_path(self) -> Path:
        """The mailman.cfg in use: the one named, else the embedded home's."""
        return self.mailman_config or self.var_dir / "mailman.cfg"

    def prepare(self, *, mailman: bool = True) -> None:
        """Make what a serving command needs on disk: the embedded Mailman
        home (when no other Mailman was named and ``mailman``) and the
        SQLite store's folder."""
        if mailman and self.remote is None and self.mailman_config is None:
            from mmgate.mailman.embedded import connect_host, ensure_home

            ensure_home(
                self.var_dir,
                smtp_host=connect_host(self.listen[0]),
                smtp_port=self.listen[1] or 8025,
                lmtp_port=self.mailman_lmtp_port,
                rest_port=self.mailman_rest_port,
            )
        if self.store_url is not None and self.store_url.startswith("sqlite:///"):
            Path(self.store_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)

    def effective(self) -> dict[str, Any]:
        """Every setting as it is in force, secrets masked, in the shape of
        the TOML file (``mmgate config``): what was not set and has no
        default is left out."""
        hostport = "{0[0]}:{0[1]}".format
        session = self.session
        remote = self.remote
        return {
            "smtp": {
                "listen": hostport(self.listen),
                "hostname": session.hostname,
                "message_size": session.message_size,
                "idle_timeout": session.idle_timeout,
                "command_timeout": session.command_timeout,
                "max_connections": session.max_connections,
                "max_connections_per_client": session.max_connections_per_client,
                "smtputf8": session.smtputf8,
                "proxy_protocol": session.proxy_protocol,
                "proxy_networks": [str(n) for n in session.proxy_networks],
                "postmaster": self.postmaster,
            },
            "tls": {
                "cert": str(self.tls.cert) if self.tls.cert else None,
                "key": str(self.tls.key) if self.tls.key else None,
                "starttls": self.tls.starttls,
                "listen": hostport(self.tls.listen) if self.tls.listen else None,
                "require": self.tls.require,
            },
            "lmtp": {"listen": hostport(self.lmtp) if self.lmtp else None},
            "postfix": {"socketmap": hostport(self.socketmap) if self.socketmap else None},
            "relay": {
                "upstream": hostport(self.upstream) if self.upstream else None,
                "tls": self.upstream_tls.policy,
                "tls_ca": self.upstream_tls.ca_file,
                "tls_name": self.upstream_tls.server_name,
                "networks": [str(n) for n in self.policy.networks],
                "domains": sorted(self.policy.domains),
            },
            "mailman": {
                "config": str(self.mailman_config) if self.mailman_config else None,
                "var_dir": str(self.var_dir),
                "refresh_interval": self.refresh_interval,
                "stale_after": self.stale_after,
                "spool_sync": self.spool_sync,
                "runners": self.runners,
                "lmtp_port": self.mailman_lmtp_port,
                "rest_port": self.mailman_rest_port,
                "url": remote.url if remote else None,
                "user": remote.user if remote else None,
                "password": SECRET if remote else None,
                "lmtp": hostport(remote.lmtp) if remote else None,
            },
            "api": {
                "store": _masked_url(self.store_url) if self.store_url else "",
                "token": SECRET if self.api_token else None,
                "bind": self.api_bind,
                "workers": self.api_workers,
            },
            "plugins": [
                {"name": spec.name, **{k: _masked(k, v) for k, v in spec.options.items()}}
                for spec in self.plugins
            ],
        }

    def require_mailman(self) -> None:
        """For the commands that use a Mailman home but never make one
        (route, api, debug, mailman): a missing home is one line (and exit
        status 2), never an empty home made where the command ran."""
        path = self.mailman_config_path
        if self.remote is None and not path.is_file():
            raise ConfigError(
                f"{path}: no Mailman home (mmgate serve creates it; or --var-dir, "
                "MMGATE_VAR_DIR, --mailman-config)"
            )

    def backend(self) -> MailmanBackend:
        """The Mailman to use: remote when a URL was given, else on this host."""
        if self.remote is not None:
            from mmgate.mailman.remote import RemoteMailman

            r = self.remote
            return RemoteMailman(r.url, user=r.user, password=r.password, lmtp=r.lmtp)
        from mmgate.mailman.local import LocalMailman

        return LocalMailman(self.mailman_config_path, spool_sync=self.spool_sync)

    def describe(self) -> str:
        if self.remote is not None:
            return f"{self.remote.url} (LMTP {self.remote.lmtp[0]}:{self.remote.lmtp[1]})"
        return str(self.mailman_config_path)

    @property
    def postfix_transport(self) -> str:
        """Where Postfix sends list mail: the LMTP listener if there is one,
        else the SMTP listener (the ``transport`` table's value)."""
        if self.lmtp is not None:
            return f"lmtp:[{self.lmtp[0]}]:{self.lmtp[1]}"
        return f"smtp:[{self.listen[0]}]:{self.listen[1]}"


SECRET = "********"
_SECRET_WORDS = ("password", "secret", "token", "key")


def _masked_url(url: str) -> str:
    """A URL with the password of its user part masked."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", rf"\g<1>{SECRET}@", url)


def _masked(key: str, value: Any) -> Any:
    return SECRET if any(word in key.lower() for word in _SECRET_WORDS) else value


def _number(value: Any, where: str, *, above: float, at_most: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number, not {value!r}")
    if not above < value <= at_most:
        raise ConfigError(f"{where}: must be above {above:g} and at most {at_most:g}, not {value}")
    return float(value)


def load(
    args: argparse.Namespace | Mapping[str, Any],
    *,
    listen_flag: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewaySettings:
    """Settings from flags (``args``), the environment and the TOML file."""
    if isinstance(args, Mapping):
        args = argparse.Namespace(**{**dict.fromkeys(FLAGS), **args})
    env = os.environ if environ is None else environ
    cfg = config.read_config(args.config)
    listen, where = config.pick(cfg, "smtp", "listen", listen_flag, "--listen", DEFAULT_LISTEN)
    upstream, up_where = config.pick(cfg, "relay", "upstream", args.relay, "--relay", None)
    mailman_cfg, _ = config.pick(
        cfg, "mailman", "config", args.mailman_config, "--mailman-config", None
    )
    var_dir, _ = config.pick(
        cfg, "mailman", "var_dir", args.var_dir or env.get("MMGATE_VAR_DIR"), "--var-dir", "var"
    )
    refresh, refresh_where = config.pick(cfg, "mailman", "refresh_interval", None, "", 2.0)
    stale, stale_where = config.pick(cfg, "mailman", "stale_after", None, "", STALE_AFTER)
    sync, sync_where = config.pick(
        cfg, "mailman", "spool_sync", args.spool_sync, "--spool-sync", "batch"
    )
    if sync not in ("batch", "file"):
        raise ConfigError(f'{sync_where}: must be "batch" or "file", not {sync!r}')
    var = Path(var_dir).resolve()
    store, _ = config.pick(cfg, "api", "store", None, "", None)
    if store is None:
        store = f"sqlite:///{var / 'mmgate.db'}"
    if getattr(args, "no_store", None) or store == "":
        store = None
    token = env.get("MMGATE_API_TOKEN") or cfg.get("api", "token")
    api_bind = cfg.get("api", "bind") or DEFAULT_API_BIND
    config.hostport(api_bind, where=cfg.where("api", "bind"))
    workers = cfg.get("api", "workers")
    if workers is not None:
        _number(workers, cfg.where("api", "workers"), above=0, at_most=64)
    return GatewaySettings(
        listen=config.hostport(listen, where=where),
        upstream=config.hostport(upstream, where=up_where) if upstream else None,
        policy=config.relay_policy(
            cfg, env, networks=args.relay_networks, domains=args.relay_domains
        ),
        var_dir=var,
        mailman_config=Path(mailman_cfg).resolve() if mailman_cfg else None,
        refresh_interval=_number(refresh, refresh_where, above=0, at_most=3600),
        spool_sync=sync,
        stale_after=_number(stale, stale_where, above=0, at_most=86400),
        remote=_remote(cfg, args, env),
        store_url=store,
        api_token=token or None,
        api_bind=api_bind,
        api_workers=int(workers or 2),
        plugins=config.plugin_specs(cfg),
        postmaster=_postmaster(cfg, args),
        lmtp=_address(cfg, args, "lmtp", "listen", "lmtp"),
        socketmap=_address(cfg, args, "postfix", "socketmap", "socketmap"),
        mailman_lmtp_port=_port(cfg, args, "lmtp_port"),
        mailman_rest_port=_port(cfg, args, "rest_port"),
        session=_session(cfg, args),
        tls=_tls(cfg, args),
        upstream_tls=_upstream_tls(cfg, args),
        runners=not getattr(args, "no_runners", False)
        and cfg.get("mailman", "runners") is not False,
    )


def _port(cfg: config.ConfigFile, args: argparse.Namespace, key: str) -> int | None:
    """``--mailman-lmtp-port`` / ``--mailman-rest-port``, else ``[mailman] KEY``."""
    flag = f"--mailman-{key.replace('_', '-')}"
    value, where = config.pick(
        cfg, "mailman", key, getattr(args, f"mailman_{key}", None), flag, None
    )
    if value is None:
        return None
    return int(_number(value, where, above=0, at_most=65535))


def _address(
    cfg: config.ConfigFile, args: argparse.Namespace, section: str, key: str, flag: str
) -> tuple[str, int] | None:
    """A HOST:PORT from ``--FLAG`` (a serve flag), else the file's key."""
    option = f"--{flag.replace('_', '-')}"
    value, where = config.pick(cfg, section, key, getattr(args, flag, None), option, None)
    return config.hostport(value, where=where) if value is not None else None


def _postmaster(cfg: config.ConfigFile, args: argparse.Namespace) -> str | None:
    value, where = config.pick(
        cfg, "smtp", "postmaster", getattr(args, "postmaster", None), "--postmaster", None
    )
    if value is None:
        return None
    from mmgate.smtp import paths, replies
    from mmgate.smtp.errors import ProtocolError

    try:
        return paths.check_mailbox(value, replies.BAD_RECIPIENT_SYNTAX, smtputf8=True)
    except ProtocolError:
        raise ConfigError(f"{where}: {value!r} is not an address") from None


def _remote(
    cfg: config.ConfigFile, args: argparse.Namespace, env: Mapping[str, str]
) -> RemoteSettings | None:
    url, _ = config.pick(cfg, "mailman", "url", args.mailman_url, "--mailman-url", None)
    if url is None:
        return None
    lmtp, lmtp_where = config.pick(
        cfg, "mailman", "lmtp", args.mailman_lmtp, "--mailman-lmtp", None
    )
    if lmtp is None:
        raise ConfigError("--mailman-url needs --mailman-lmtp HOST:PORT (or [mailman] lmtp)")
    user, _ = config.pick(cfg, "mailman", "user", args.mailman_user, "--mailman-user", "restadmin")
    password = env.get("MMGATE_MAILMAN_PASSWORD") or cfg.get("mailman", "password")
    if not password:
        raise ConfigError(
            "--mailman-url needs a password: MMGATE_MAILMAN_PASSWORD or [mailman] password"
        )
    return RemoteSettings(url, user, password, config.hostport(lmtp, where=lmtp_where))
