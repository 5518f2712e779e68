"""The ``mmgate`` command: one entry point, a subcommand per job.

Errors in arguments are one line on stderr and exit status 2, so a wrong
flag in a unit file or a script is obvious at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mmgate import config, tls
from mmgate._version import __version__
from mmgate.children import die_with_parent
from mmgate.debugging import DebuggingServer
from mmgate.plugins import load as load_plugins
from mmgate.proxy import PureProxy
from mmgate.runtime import LoopChoiceError, loop_factory
from mmgate.server import SMTPServer, loop
from mmgate.settings import FLAGS as SETTINGS_FLAGS
from mmgate.settings import GatewaySettings
from mmgate.settings import load as load_settings

_BUILTIN_CLASSES = ("DebuggingServer", "PureProxy", "MailmanProxy")


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def resolve_server_class(name: str) -> type[SMTPServer]:
    """A built-in class name, or a dotted ``module.Class`` path."""
    if name in _BUILTIN_CLASSES:
        module_name, class_name = "mmgate", name
    else:
        module_name, _, class_name = name.rpartition(".")
        if not module_name:
            raise UsageError(
                f"unknown class {name!r}: use {', '.join(_BUILTIN_CLASSES)} or module.Class"
            )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load class {name!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, SMTPServer)):
        raise UsageError(f"{name!r} is not an SMTPServer subclass")
    return cls


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    """The relay-control flags every serving command takes."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--relay-networks",
        metavar="NETS",
        help="clients that may relay, comma-separated "
        "(default 127.0.0.0/8,::1; env MMGATE_RELAY_NETWORKS)",
    )
    parser.add_argument(
        "--relay-domains",
        metavar="DOMAINS",
        help="recipient domains anyone may relay to, comma-separated; "
        ".example.org includes subdomains (env MMGATE_RELAY_DOMAINS)",
    )


def smtpd_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="An RFC 5321 smtp proxy with optional RFC 1870 and RFC 6531 extensions "
        "(the command line of Python's smtpd, on mmgate).",
    )
    parser.add_argument("-V", "--version", action="version", version=f"mmgate {__version__}")
    parser.add_argument(
        "-n",
        "--nosetuid",
        action="store_true",
        help="do not setuid to 'nobody' (which is done when run as root)",
    )
    parser.add_argument(
        "-c",
        "--class",
        dest="classname",
        default="PureProxy",
        help="server class: DebuggingServer, PureProxy, MailmanProxy "
        "or module.Class (default: PureProxy)",
    )
    parser.add_argument(
        "-s",
        "--size",
        type=int,
        default=None,
        help="largest message accepted, in octets (0: no limit)",
    )
    parser.add_argument("-u", "--smtputf8", action="store_true", help="enable SMTPUTF8")
    parser.add_argument("-d", "--debug", action="store_true", help="debug output on stderr")
    add_relay_options(parser)
    parser.add_argument(
        "localspec",
        nargs="?",
        default="localhost:8025",
        help="where to listen (default localhost:8025)",
    )
    parser.add_argument(
        "remotespec",
        nargs="?",
        default="localhost:25",
        help="the upstream relay (default localhost:25)",
    )
    return parser


def _drop_privileges() -> None:
    """Become 'nobody' after binding, as smtpd did unless -n was given."""
    if os.geteuid() != 0:
        return
    import pwd

    try:
        os.setuid(pwd.getpwnam("nobody").pw_uid)
    except (KeyError, PermissionError):
        raise UsageError('cannot setuid "nobody"; try running with -n option') from None


def run_smtpd(argv: Sequence[str], prog: str = "mmgate smtpd") -> int:
    args = smtpd_parser(prog).parse_args(argv)
    if args.size is not None and args.size < 0:
        raise UsageError(f"--size must be 0 or more octets, not {args.size}")
    localaddr = config.hostport(args.localspec, where="the local address")
    remoteaddr = config.hostport(args.remotespec, where="the remote address")
    cls = resolve_server_class(args.classname)
    loop_factory()  # a bad MMGATE_LOOP is refused before anything binds
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    policy = config.relay_policy(
        config.read_config(args.config),
        os.environ,
        networks=args.relay_networks,
        domains=args.relay_domains,
    )
    kwargs: dict[str, object] = {"enable_SMTPUTF8": args.smtputf8}
    if args.size is not None:
        kwargs["data_size_limit"] = args.size
    if issubclass(cls, PureProxy):
        kwargs["relay_policy"] = policy
    try:
        server = cls(localaddr, remoteaddr, **kwargs)  # type: ignore[arg-type]
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.localspec}: {exc.strerror or exc}") from None
    if isinstance(server, DebuggingServer):
        server.print_envelope = False  # exactly smtpd's output, for scripts that parse it
    if not args.nosetuid:
        _drop_privileges()
    loop()
    return 0


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
    """What ``serve``, ``route`` (and ``debug``) need to find Mailman and the upstream."""
    add_relay_options(parser)
    parser.add_argument(
        "--relay",
        metavar="HOST:PORT",
        help="upstream SMTP server for recipients that are not lists",
    )
    parser.add_argument(
        "--mailman-config",
        metavar="PATH",
        help="an existing Mailman's mailman.cfg (default: embedded Mailman)",
    )
    parser.add_argument(
        "--var-dir", metavar="DIR", help="where the embedded Mailman lives (default ./var)"
    )
    parser.add_argument(
        "--mailman-url",
        metavar="URL",
        help="a remote Mailman's REST API (with --mailman-lmtp); "
        "password from MMGATE_MAILMAN_PASSWORD or [mailman] password",
    )
    parser.add_argument("--mailman-user", metavar="NAME", help="REST user (default restadmin)")
    parser.add_argument(
        "--mailman-lmtp", metavar="HOST:PORT", help="the remote Mailman's LMTP runner"
    )
    parser.add_argument(
        "--spool-sync",
        choices=("batch", "file"),
        help="queue files made durable by one syncfs per batch (default) "
        "or by an fsync each, as Mailman does",
    )


def _log_to_stderr(debug: bool) -> None:
    """mmgate's own log lines on stderr (Mailman keeps its loggers to itself)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("mmgate")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def _is_loopback_bind(bind: str) -> bool:
    import ipaddress

    host = bind.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_api(argv: Sequence[str]) -> int:
    from gunicorn.app.base import BaseApplication

    from mmgate.api import ApiSettings, create_app

    parser = _Parser(prog="mmgate api", description="The admin HTTP API, under gunicorn.")
    parser.add_argument("--bind", metavar="HOST:PORT", help="default 127.0.0.1:8026")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default 2)")
    add_gateway_options(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args)
    settings.require_mailman()
    settings.prepare(mailman=False)
    bind = args.bind or settings.api_bind
    config.hostport(bind, where="--bind")
    if not _is_loopback_bind(bind) and not settings.api_token:
        raise UsageError(
            f"the API on {bind} would be open to the network: set [api] token "
            "or MMGATE_API_TOKEN, or bind to a loopback address"
        )
    ApiSettings.from_gateway(settings)  # a setting it cannot use stops it here

    def fresh() -> GatewaySettings:
        try:
            return load_settings(args)
        except config.ConfigError as exc:
            logging.getLogger("mmgate").error("reload refused, settings unchanged: %s", exc)
            return settings

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        """gunicorn with the app and options given here: no second command line."""

        def load_config(self) -> None:
            options = {
                "bind": bind,
                "workers": args.workers or settings.api_workers,
                # threads, so that slow or stalled clients hold a thread each,
                # never a whole worker; timeouts bound every connection
                "worker_class": "gthread",
                "threads": 8,
                "timeout": 30,
                "keepalive": 5,
                "proc_name": "mmgate-api",
                "control_socket_disable": True,
                "graceful_timeout": 10,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Again on SIGHUP (gunicorn reloads its workers): settings anew.
            return create_app(ApiSettings.from_gateway(fresh()))

    _Gunicorn().run()
    return 0


def _api_beside(settings: GatewaySettings, args: argparse.Namespace) -> Any:
    """``mmgate serve`` starts the API in its own process (gunicorn) beside SMTP."""
    import subprocess

    # -P: the current directory is not on sys.path, so a ./mmgate there is
    # never what runs (as root, perhaps).
    bind = args.api_bind or settings.api_bind
    argv = [sys.executable, "-P", "-m", "mmgate", "api", "--bind", bind]
    # what says where Mailman, the store and relay control are; not SMTP-only flags
    for flag in (f for f in SETTINGS_FLAGS if f not in ("spool_sync", "no_store")):
        value = getattr(args, flag, None)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if args.mailman_config is None and settings.remote is None:
        argv += ["--mailman-config", str(settings.mailman_config_path)]
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())

    def watch() -> None:  # the API going away must be said, and must not stop mail
        code = child.wait()
        if code not in (0, -15):
            logging.getLogger("mmgate").error(
                "the admin API exited with status %s (see above); SMTP goes on", code
            )

    import threading

    threading.Thread(target=watch, name="mmgate-api-watch", daemon=True).start()
    return child


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Every flag that makes serve's settings: ``serve`` itself, and the
    commands that show what they would be (``config``, ``postfix``)."""
    parser.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8025")
    parser.add_argument(
        "--lmtp",
        metavar="HOST:PORT",
        help="also an LMTP listener (RFC 2033), in the place of Mailman's LMTP runner",
    )
    parser.add_argument(
        "--socketmap",
        metavar="HOST:PORT",
        help="answer Postfix's lookup tables (socketmap: domains, recipients, transport)",
    )
    add_gateway_options(parser)
    parser.add_argument(
        "--postmaster",
        metavar="ADDRESS",
        help="where mail for postmaster goes (default: the Maildir VAR/postmaster/)",
    )
    parser.add_argument("--hostname", metavar="NAME", help="the name in the greeting")
    parser.add_argument(
        "--message-size", type=int, metavar="OCTETS", help="SIZE limit (default 32 MiB; 0: none)"
    )
    parser.add_argument(
        "--idle-timeout", type=float, metavar="SECONDS", help="between commands (default 300)"
    )
    parser.add_argument(
        "--command-timeout", type=float, metavar="SECONDS", help="for one command line (default 60)"
    )
    parser.add_argument(
        "--max-connections", type=int, metavar="N", help="sessions at once (default 1000)"
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=int,
        metavar="N",
        help="sessions from one address (default 50; loopback exempt)",
    )
    parser.add_argument(
        "--smtputf8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="offer SMTPUTF8, RFC 6531 (default off)",
    )
    parser.add_argument(
        "--proxy-protocol",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read a PROXY header (HAProxy v1/v2) before greeting (default off)",
    )
    parser.add_argument(
        "--proxy-networks",
        metavar="NETS",
        help="the balancers whose PROXY header is believed (default loopback)",
    )
    parser.add_argument(
        "--relay-tls",
        choices=("none", "may", "encrypt", "verify"),
        help="TLS with the upstream (default may: STARTTLS when offered)",
    )
    parser.add_argument(
        "--relay-tls-ca", metavar="PEM", help="CA certificates for --relay-tls verify"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="certificate, then its chain")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's key")
    parser.add_argument(
        "--starttls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="offer STARTTLS (default on; without --tls-cert, a self-signed "
        "certificate under VAR/tls/)",
    )
    parser.add_argument(
        "--tls-listen", metavar="HOST:PORT", help="also an implicit-TLS listener (RFC 8314)"
    )
    parser.add_argument(
        "--tls-require",
        choices=("relay", "none", "all"),
        help="who must use TLS before MAIL (default relay: relay clients but loopback)",
    )
    parser.add_argument(
        "--no-runners",
        action="store_true",
        help="do not start Mailman's runners (the embedded Mailman's; for sites that run "
        "Mailman themselves)",
    )
    parser.add_argument(
        "--mailman-lmtp-port", type=int, metavar="PORT", help="the embedded Mailman's LMTP port"
    )
    parser.add_argument(
        "--mailman-rest-port", type=int, metavar="PORT", help="the embedded Mailman's REST port"
    )
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="keep no counters, journal or pauses (implies --no-api)",
    )


def _tls_files(settings: GatewaySettings) -> tuple[Path, Path]:
    """The configured certificate and key, or the self-signed pair."""
    if settings.tls.cert is not None and settings.tls.key is not None:
        return settings.tls.cert, settings.tls.key
    name = settings.session.hostname or socket.getfqdn()
    return tls.ensure_self_signed(settings.var_dir / "tls", name)


def _tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """serve's TLS context, or None when neither STARTTLS nor an
    implicit-TLS listener is wanted; a bad certificate is one line."""
    if not (settings.tls.starttls or settings.tls.listen):
        return None
    try:
        return tls.server_context(*_tls_files(settings))
    except tls.TLSConfigError as exc:
        raise UsageError(f"TLS cannot be used: {exc}") from None


def run_serve(argv: Sequence[str]) -> int:
    from mmgate.gateway import MailmanProxy
    from mmgate.mailman.backend import MailmanUnavailable
    from mmgate.store import Store

    parser = _Parser(
        prog="mmgate serve", description="The gateway: list mail into Mailman, the rest relayed."
    )
    add_serve_options(parser)
    parser.add_argument("-d", "--debug", action="store_true", help="debug log lines")
    parser.add_argument("--no-api", action="store_true", help="do not start the admin API")
    parser.add_argument(
        "--api-bind", metavar="HOST:PORT", help="the admin API's address (default 127.0.0.1:8026)"
    )
    args = parser.parse_args(argv)
    settings = load_settings(args, listen_flag=args.listen)
    loop_factory()
    plugins = load_plugins(settings.plugins)
    settings.prepare()
    tls_context = _tls_context(settings)
    try:
        server = MailmanProxy(
            settings.listen,
            settings.upstream,
            mailman=settings.backend(),
            store=Store(settings.store_url) if settings.store_url else None,
            relay_policy=settings.policy,
            refresh_interval=settings.refresh_interval,
            stale_after=settings.stale_after,
            plugins=plugins,
            var_dir=settings.var_dir,
            postmaster=settings.postmaster,
            tls_context=tls_context,
            tls_required_networks=settings.tls.required_networks(settings.policy),
            upstream_tls=settings.upstream_tls,
            **settings.session.server_kwargs(),
        )
        if settings.tls.listen is not None and tls_context is not None:
            implicit = server.add_listener(settings.tls.listen, implicit_tls=True)
    except MailmanUnavailable as exc:
        raise UsageError(f"Mailman cannot be used: {exc}") from None
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {settings.listen[0]}:{settings.listen[1]}: {exc.strerror or exc}"
        ) from None
    lmtp = None
    if settings.lmtp is not None:
        from mmgate.lmtp import LMTPGateway

        try:
            # no plugins: the MTA in front applied its policy to the client
            lmtp = LMTPGateway(
                settings.lmtp,
                server,
                data_size_limit=settings.session.message_size,
                idle_timeout=settings.session.idle_timeout,
                command_timeout=settings.session.command_timeout,
            )
        except OSError as exc:
            raise UsageError(
                f"cannot listen for LMTP on {settings.lmtp[0]}:{settings.lmtp[1]}: "
                f"{exc.strerror or exc}"
            ) from None
    socketmap = None
    if settings.socketmap is not None:
        from mmgate.socketmap import SocketmapServer

        try:
            socketmap = SocketmapServer(
                settings.socketmap, server.router, transport=settings.postfix_transport
            )
        except OSError as exc:
            raise UsageError(
                f"cannot listen for socketmap on {settings.socketmap[0]}:{settings.socketmap[1]}: "
                f"{exc.strerror or exc}"
            ) from None
    _log_to_stderr(args.debug)
    snap = server.router.snapshot
    logging.getLogger("mmgate").info(
        "serving on %s:%d; Mailman %s (%d lists, %d domains); relay %s",
        *server.address,
        settings.describe(),
        len(snap.lists),
        len(snap.domains),
        f"{settings.upstream[0]}:{settings.upstream[1]}" if settings.upstream else "not configured",
    )
    if tls_context is not None:
        logging.getLogger("mmgate").info(
            "TLS: STARTTLS offered%s with %s",
            f", implicit TLS on {implicit[0]}:{implicit[1]}" if settings.tls.listen else "",
            settings.tls.cert or "a self-signed certificate",
        )
    if lmtp is not None:
        logging.getLogger("mmgate").info("LMTP on %s:%d", *lmtp.address)
    if socketmap is not None:
        logging.getLogger("mmgate").info(
            "Postfix socketmap on %s:%d (list mail to %s)",
            *socketmap.address,
            settings.postfix_transport,
        )
    if settings.upstream is None:
        logging.getLogger("mmgate").warning(
            "no relay configured: mail to other domains from trusted clients (Mailman's copies "
            "to members) is deferred with 451 4.3.5 until --relay HOST:PORT is set"
        )
    api = None
    if not (args.no_api or args.no_store or settings.store_url is None):
        api = _api_beside(settings, args)
    runners = None
    if settings.runners and settings.remote is None and settings.mailman_config is None:
        from mmgate.mailman.runners import MailmanRunners

        runners = MailmanRunners(settings.mailman_config_path, preexec=die_with_parent())
        runners.start()

    def reload() -> None:
        """SIGHUP: settings again from flags, environment and file; what can
        change live changes, sessions go on; a bad file changes nothing."""
        log = logging.getLogger("mmgate")
        try:
            new = load_settings(args, listen_flag=args.listen)
            plugins = load_plugins(new.plugins)
        except (config.ConfigError, UsageError) as exc:
            log.error("reload refused, settings unchanged: %s", exc)
            return
        server.relay_policy = new.policy
        server.postmaster = new.postmaster
        server.router.stale_after = new.stale_after
        server.directory.refresh_interval = new.refresh_interval
        server.set_plugins(plugins)
        server.tls_required_networks = new.tls.required_networks(new.policy)
        if server.tls_context is not None:
            cert, key = _tls_files(new)
            try:
                tls.reload(server.tls_context, cert, key)
            except tls.TLSConfigError as exc:
                log.error("reload: TLS certificate unchanged: %s", exc)
        for what, old, now in (
            ("listen", settings.listen, new.listen),
            ("lmtp", settings.lmtp, new.lmtp),
            ("socketmap", settings.socketmap, new.socketmap),
            ("relay", settings.upstream, new.upstream),
            ("Mailman", settings.describe(), new.describe()),
        ):
            if old != now:
                log.warning("reload: %s changed; it takes effect at the next restart", what)
        if api is not None and api.poll() is None:
            api.send_signal(signal.SIGHUP)  # gunicorn reloads its workers
        log.info("settings reloaded (relay control, plugins, refresh, staleness)")

    try:
        loop(on_hangup=reload)
    finally:
        if runners is not None:
            runners.stop()
        if api is not None:
            api.terminate()
            api.wait(30)
    return 0


def run_plugins(argv: Sequence[str]) -> int:
    from mmgate.hooks import HookChain

    parser = _Parser(
        prog="mmgate plugins", description="The plugins the configuration loads, in order."
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    args = parser.parse_args(argv)
    settings = load_settings({"config": args.config})
    chain = HookChain(load_plugins(settings.plugins))
    if not chain.plugins:
        print("no plugins configured ([[plugins]] tables in the --config file)")
    for n, (name, hooks) in enumerate(chain.describe(), 1):
        print(f"{n}. {name}: {' '.join(hooks) or '(no hooks)'}")
    return 0


def _show(argv: Sequence[str], prog: str, description: str, render: Callable[[Any], str]) -> int:
    """A command that reads serve's settings (its flags, the environment,
    the file), writes nothing, and prints what ``render`` makes of them."""
    parser = _Parser(prog=prog, description=description)
    add_serve_options(parser)
    args = parser.parse_args(argv)
    print(render(load_settings(args, listen_flag=args.listen)), end="")
    return 0


def run_config(argv: Sequence[str]) -> int:
    return _show(
        argv,
        "mmgate config",
        "The settings in force (file, environment, flags), secrets masked, as TOML.",
        lambda settings: config.dump_toml(settings.effective()),
    )


def run_postfix(argv: Sequence[str]) -> int:
    from mmgate.postfix import recipe

    return _show(
        argv,
        "mmgate postfix",
        "The Postfix lines that put mmgate in front of Mailman, from the settings.",
        recipe,
    )


def run_mailman(argv: Sequence[str]) -> int:
    """Mailman's own command line on the gateway's Mailman home: the right
    mailman.cfg, and --run-as-root when run as root (Mailman refuses root
    otherwise). The process becomes Mailman's command: its output and exit
    status are Mailman's."""
    parser = _Parser(
        prog="mmgate mailman",
        description="Mailman's command line on the gateway's Mailman "
        "(e.g. mmgate mailman create test@example.com).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--var-dir", metavar="DIR", help="the gateway's var directory")
    parser.add_argument("--mailman-config", metavar="PATH", help="an existing mailman.cfg")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="Mailman's command and options")
    args = parser.parse_args(argv)
    settings = load_settings(
        {"config": args.config, "var_dir": args.var_dir, "mailman_config": args.mailman_config}
    )
    if settings.remote is not None:
        raise UsageError(f"Mailman is remote ({settings.remote.url}): run its commands there")
    settings.require_mailman()
    cfg = settings.mailman_config_path
    argv0 = [sys.executable, "-c", "import sys; from mailman.bin.mailman import main; main()"]
    root = ["--run-as-root"] if os.geteuid() == 0 else []
    sys.stdout.flush()
    os.execv(sys.executable, [*argv0, "-C", str(cfg), *root, *(args.command or ["--help"])])


def run_route(argv: Sequence[str]) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from mmgate.mailman.backend import MailmanUnavailable
    from mmgate.router import Router
    from mmgate.store import PausedLists

    parser = _Parser(
        prog="mmgate route", description="What the gateway would do with each address."
    )
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument(
        "--client",
        default="127.0.0.1",
        metavar="IP",
        help="the client address relay control is judged for (default 127.0.0.1)",
    )
    add_gateway_options(parser)
    args = parser.parse_intermixed_args(argv)
    settings = load_settings(args)
    settings.require_mailman()
    try:
        snap = settings.backend().open()
    except MailmanUnavailable as exc:
        raise UsageError(f"Mailman cannot be used: {exc}") from None
    router = Router(
        snap,
        settings.policy,
        settings.upstream,
        paused=PausedLists(settings.store_url),
        stale_after=settings.stale_after,
    )
    try:
        decisions = [router.verdict(address, client=args.client) for address in args.addresses]
    except SQLAlchemyError as exc:
        raise UsageError(f"the store {settings.store_url} cannot be read: {exc}") from None
    if args.json:
        print(json.dumps([d.as_dict() for d in decisions], indent=2))
    else:
        width = max(len(d.route.address) for d in decisions)
        for d in decisions:
            print(f"{d.route.address:<{width}}  {d.describe()}")
    return 0


def run_debug(argv: Sequence[str]) -> int:
    from mmgate.debug.lab import Lab, LabError
    from mmgate.debug.server import DebugServer
    from mmgate.mailman.backend import MailmanUnavailable
    from mmgate.mailman.local import LocalMailman
    from mmgate.store import PausedLists

    parser = _Parser(
        prog="mmgate debug", description="Show every message and what Mailman would do with it."
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8025")
    add_gateway_options(parser)
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per message, for scripts",
    )
    parser.add_argument("--full", action="store_true", help="whole bodies, no MIME summary")
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--maildir", metavar="DIR", help="also store every message here")
    store.add_argument("--mbox", metavar="FILE", help="also store every message here")
    parser.add_argument(
        "--lab",
        action="store_true",
        help="run a Mailman with its runners and inject list mail for real",
    )
    parser.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="NAME@DOMAIN",
        help="(--lab) a list to create; repeatable",
    )
    parser.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="(--lab) a member of every list; repeatable",
    )
    parser.add_argument(
        "--owner",
        default="owner@example.org",
        metavar="ADDRESS",
        help="(--lab) the lists' owner (default owner@example.org)",
    )
    args = parser.parse_args(argv)
    if not args.lab and (args.list or args.member):
        raise UsageError("--list and --member need --lab")
    if args.lab and (args.mailman_config or args.mailman_url):
        raise UsageError(
            "--lab runs its own Mailman: --mailman-config and --mailman-url do not apply"
        )
    lab: Lab | None = None
    try:
        if args.lab:
            lab = Lab(args.var_dir, args.list, args.member, args.owner)
            listen = config.hostport(args.listen or "127.0.0.1:8025", where="--listen")
            args.mailman_config = str(lab.home(listen[1]))
        settings = load_settings(args, listen_flag=args.listen)
        if lab is None:
            settings.require_mailman()
            settings.prepare(mailman=False)
        backend = settings.backend()
        if lab is not None:
            assert isinstance(backend, LocalMailman)
            backend.start()
            lab.populate(backend)
        server = DebugServer(
            settings.listen,
            settings.upstream,
            mailman=backend,
            relay_policy=settings.policy,
            refresh_interval=1.0 if lab else settings.refresh_interval,
            stale_after=settings.stale_after,
            paused=PausedLists(None if lab else settings.store_url),
            lab=lab is not None,
            output_format=args.format,
            full=args.full,
            maildir=args.maildir,
            mbox=args.mbox,
        )
        if lab is not None:
            lab.start_runners()
    except BaseException as exc:
        if lab is not None:  # whatever went wrong, leave nothing running
            lab.stop_runners()
            lab.cleanup()
        if isinstance(exc, MailmanUnavailable | LabError):
            raise UsageError(str(exc)) from None
        if not isinstance(exc, OSError):
            raise
        raise UsageError(
            f"cannot listen on {args.listen or '127.0.0.1:8025'}: {exc.strerror or exc}"
        ) from None
    _log_to_stderr(False)
    snap = server.router.snapshot
    what = (
        f"lab in {lab.var} with Mailman's runners: lists {', '.join(lab.lists) or 'none'}, "
        f"members {', '.join(lab.members) or 'none'}"
        if lab
        else f"Mailman {settings.describe()} ({len(snap.lists)} lists)"
    )
    logging.getLogger("mmgate").info("debug server on %s:%d; %s", *server.address, what)
    try:
        loop()
    finally:
        if lab is not None:
            lab.stop_runners()
            lab.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "serve": run_serve,
        "api": run_api,
        "route": run_route,
        "debug": run_debug,
        "smtpd": run_smtpd,
        "plugins": run_plugins,
        "postfix": run_postfix,
        "mailman": run_mailman,
        "config": run_config,
    }
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: mmgate {{{','.join(commands)}}} ...\n\n"
            "  serve    the gateway in front of Mailman (mmgate serve --help)\n"
            "  api      the admin HTTP API under gunicorn (serve starts it too)\n"
            "  route    what the gateway would do with an address\n"
            "  debug    show every message and its routes; --lab for a list round trip\n"
            "  smtpd    the command line of Python's smtpd (mmgate smtpd --help)\n"
            "  plugins  the plugins the configuration loads, in order\n"
            "  postfix  the Postfix lines that put mmgate in front of Mailman\n"
            "  mailman  Mailman's own commands on the gateway's Mailman (create, addmembers...)\n"
            "  config   the settings in force, secrets masked"
        )
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"mmgate {__version__}")
        return 0
    command = commands.get(argv[0])
    try:
        if command is None:
            raise UsageError(f"unknown command {argv[0]!r}; try 'mmgate --help'")
        return command(argv[1:])
    except (UsageError, LoopChoiceError, config.ConfigError) as exc:
        print(f"mmgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
