"""mmgate's settings: a TOML file, the environment, the command line.

Later sources win: defaults, then the file (``--config``), then the
environment (``MMGATE_*``), then flags. Every error is one line that names
where the bad value came from: the file and key, the variable, or the flag.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmgate.relay.policy import (
    DEFAULT_NETWORKS,
    RelayConfigError,
    RelayPolicy,
    parse_domains,
    parse_networks,
)

#: How old a Mailman snapshot may grow (Mailman unreadable) before the
#: router turns list-domain verdicts temporary (451 4.3.0).
STALE_AFTER = 60.0

_STRINGS = (list, "a list of strings")
#: Every key the file may hold: section -> key -> (type, what it must be).
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "smtp": {
        "listen": (str, "HOST:PORT"),
        "postmaster": (str, "an address for postmaster mail (default: VAR/postmaster/)"),
        "hostname": (str, "the host name in the greeting and Received: lines"),
        "message_size": (int, "a size limit in octets (0: none)"),
        "idle_timeout": ((int, float), "a number of seconds"),
        "command_timeout": ((int, float), "a number of seconds"),
        "max_connections": (int, "a number of sessions"),
        "max_connections_per_client": (int, "a number of sessions"),
        "smtputf8": (bool, "true or false: offer SMTPUTF8 (RFC 6531)"),
        "proxy_protocol": (bool, "true or false: read a PROXY header (HAProxy) first"),
        "proxy_networks": _STRINGS,
    },
    "lmtp": {
        "listen": (str, "HOST:PORT (an LMTP listener, RFC 2033)"),
    },
    "tls": {
        "cert": (str, "a PEM file: the certificate, then its chain"),
        "key": (str, "a PEM file: the certificate's private key"),
        "starttls": (bool, "true or false: offer STARTTLS (RFC 3207)"),
        "listen": (str, "HOST:PORT of an implicit-TLS listener (RFC 8314)"),
        "require": (str, '"relay" (relay clients but loopback), "none" or "all"'),
    },
    "postfix": {
        "socketmap": (str, "HOST:PORT (Postfix's lookup tables, socketmap_table(5))"),
    },
    "relay": {
        "upstream": (str, "HOST:PORT"),
        "tls": (str, '"none", "may", "encrypt" or "verify"'),
        "tls_ca": (str, "a PEM file of CA certificates (tls = verify)"),
        "tls_name": (str, "the name the upstream's certificate must carry (tls = verify)"),
        "networks": _STRINGS,
        "domains": _STRINGS,
    },
    "api": {
        "store": (str, "an SQLAlchemy URL, or empty for no store"),
        "token": (str, "the bearer token of the admin API"),
        "bind": (str, "HOST:PORT"),
        "workers": (int, "a number of gunicorn workers"),
    },
    "mailman": {
        "config": (str, "the path of a mailman.cfg"),
        "var_dir": (str, "a directory"),
        "refresh_interval": ((int, float), "a number of seconds"),
        "stale_after": ((int, float), "a number of seconds"),
        "spool_sync": (str, '"batch" or "file"'),
        "url": (str, "the URL of a Mailman REST API"),
        "user": (str, "a REST user name"),
        "password": (str, "the REST password"),
        "lmtp": (str, "HOST:PORT"),
        "lmtp_port": (int, "the embedded Mailman's LMTP port"),
        "rest_port": (int, "the embedded Mailman's REST port"),
        "runners": (bool, "true or false: start Mailman's runners (embedded Mailman)"),
    },
}


class ConfigError(Exception):
    """A setting that cannot be used; the message is the one line to print."""


@dataclass(frozen=True)
class ConfigFile:
    path: str | None
    data: Mapping[str, Any]

    def get(self, section: str, key: str) -> Any:
        return self.data.get(section, {}).get(key)

    def where(self, section: str, key: str) -> str:
        return f"{self.path}: {section}.{key}"


def read_config(path: str | None) -> ConfigFile:
    """Read and check a config file; ``None`` is the empty configuration."""
    if path is None:
        return ConfigFile(None, {})
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, table in data.items():
        if section == "plugins":
            _check_plugins(path, table)
            continue
        if section not in SCHEMA:
            known = ", ".join(sorted([*SCHEMA, "plugins"]))
            raise ConfigError(f"{path}: [{section}]: unknown section (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: must be a table ([{section}])")
        for key, value in table.items():
            if key not in SCHEMA[section]:
                known = ", ".join(sorted(SCHEMA[section]))
                raise ConfigError(f"{path}: {section}.{key}: unknown key (known: {known})")
            kind, what = SCHEMA[section][key]
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if kind is list:
                ok = ok and all(isinstance(v, str) for v in value)
            if not ok:
                raise ConfigError(f"{path}: {section}.{key}: must be {what}")
    return ConfigFile(path, data)


@dataclass(frozen=True)
class PluginSpec:
    """One ``[[plugins]]`` table: a name (an entry point of the
    ``mmgate.plugins`` group, or ``module:Class``) and its options."""

    name: str
    options: Mapping[str, Any]
    where: str  #: "FILE: plugins[N]", for error lines


def _check_plugins(path: str, tables: Any) -> None:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: plugins: must be [[plugins]] tables")
    for n, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: plugins[{n}].name: must be a plugin name")
        options = table.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: plugins[{n}].options: must be a table")


def plugin_specs(config: ConfigFile) -> tuple[PluginSpec, ...]:
    """The configured plugins, in order. Options are the table's other keys
    (or an ``options`` table)."""
    specs = []
    for n, table in enumerate(config.data.get("plugins", [])):
        options = {k: v for k, v in table.items() if k not in ("name", "options")}
        options.update(table.get("options", {}))
        specs.append(PluginSpec(table["name"], options, f"{config.path}: plugins[{n}]"))
    return tuple(specs)


def hostport(text: str, *, where: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``, or a ConfigError naming ``where``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: must be HOST:PORT, not {text!r}")
    return host, int(port)


def pick(
    config: ConfigFile, section: str, key: str, flag: Any, flag_name: str, default: Any
) -> tuple[Any, str]:
    """A setting and where it came from: the flag, else the file, else the default."""
    if flag is not None:
        return flag, flag_name
    value = config.get(section, key)
    if value is not None:
        return value, config.where(section, key)
    return default, f"the default {flag_name}"


def relay_policy(
    config: ConfigFile,
    environ: Mapping[str, str],
    *,
    networks: str | None = None,
    domains: str | None = None,
) -> RelayPolicy:
    """The relay policy from file, then ``MMGATE_RELAY_*``, then flags."""
    try:
        nets = DEFAULT_NETWORKS
        doms: frozenset[str] = frozenset()
        if config.get("relay", "networks") is not None:
            nets = parse_networks(
                config.get("relay", "networks"), source=config.where("relay", "networks")
            )
        if config.get("relay", "domains") is not None:
            doms = parse_domains(
                config.get("relay", "domains"), source=config.where("relay", "domains")
            )
        if "MMGATE_RELAY_NETWORKS" in environ:
            nets = parse_networks(environ["MMGATE_RELAY_NETWORKS"], source="MMGATE_RELAY_NETWORKS")
        if "MMGATE_RELAY_DOMAINS" in environ:
            doms = parse_domains(environ["MMGATE_RELAY_DOMAINS"], source="MMGATE_RELAY_DOMAINS")
        if networks is not None:
            nets = parse_networks(networks, source="--relay-networks")
        if domains is not None:
            doms = parse_domains(domains, source="--relay-domains")
    except RelayConfigError as exc:
        raise ConfigError(str(exc)) from None
    return RelayPolicy(nets, doms)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def dump_toml(doc: Mapping[str, Any]) -> str:
    """A settings document (section -> key -> value; ``plugins``: a list of
    tables) as TOML that :func:`read_config` reads back. Values are strings,
    numbers, booleans and lists of those; ``None`` is left out."""
    out = []
    for section, table in doc.items():
        tables = table if isinstance(table, list) else [table]
        for one in tables:
            lines = [f"{key} = {_toml_value(v)}" for key, v in one.items() if v is not None]
            if lines:
                out.append(f"[[{section}]]" if isinstance(table, list) else f"[{section}]")
                out += [*lines, ""]
    return "\n".join(out)
