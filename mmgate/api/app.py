"""The Falcon app: resources, authentication, errors (see openapi.py)."""

from __future__ import annotations

import base64
import hmac
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import falcon
from mailman.runners.lmtp import SUBADDRESS_NAMES, SUBADDRESS_QUEUES

from mmgate import config, settings
from mmgate.api.openapi import spec
from mmgate.config import STALE_AFTER
from mmgate.mailman.backend import MailmanBackend
from mmgate.mailman.routing import Snapshot
from mmgate.relay.policy import RelayPolicy
from mmgate.router import Router
from mmgate.store import HEARTBEAT_FRESH, PausedLists, Store


@dataclass
class ApiSettings:
    store_url: str
    backend: MailmanBackend
    token: str | None = None
    policy: RelayPolicy = field(default_factory=RelayPolicy)
    upstream: tuple[str, int] | None = None
    stale_after: float = STALE_AFTER
    #: seconds a Mailman snapshot is reused before it is read again
    snapshot_ttl: float = 2.0
    #: the SMTP side this API stands beside, by the host name it records
    #: under; None: any gateway sharing the store
    gateway: str | None = None

    @classmethod
    def from_environment(cls) -> ApiSettings:
        """What ``gunicorn 'mmgate.api:create_app()'`` runs with."""
        return cls.from_gateway(
            settings.load(
                {
                    "config": os.environ.get("MMGATE_CONFIG"),
                    "var_dir": os.environ.get("MMGATE_VAR_DIR"),
                }
            )
        )

    @classmethod
    def from_gateway(cls, gateway: settings.GatewaySettings) -> ApiSettings:
        if gateway.store_url is None:
            raise config.ConfigError("the admin API needs the store ([api] store is empty)")
        return cls(
            store_url=gateway.store_url,
            backend=gateway.backend(),
            token=gateway.api_token,
            policy=gateway.policy,
            upstream=gateway.upstream,
            stale_after=gateway.stale_after,
            gateway=gateway.session.hostname or socket.getfqdn(),
        )


class _Mailman:
    """The API's view of Mailman: a snapshot read again when older than a TTL."""

    def __init__(self, backend: MailmanBackend, ttl: float) -> None:
        self.backend = backend
        self.ttl = ttl
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._taken = 0.0
        self.error: str | None = None

    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        with self._lock:
            if fresh or self._snap is None or time.monotonic() - self._taken > self.ttl:
                try:
                    self._snap = self.backend.open()
                    self._taken = time.monotonic()
                    self.error = None
                except Exception as exc:
                    self.error = str(exc) or type(exc).__name__
                    if self._snap is None:
                        raise falcon.HTTPServiceUnavailable(
                            title="Mailman unavailable", description=self.error
                        ) from None
            return self._snap


def _list_view(snap: Snapshot, fqdn: str, list_id: str, paused: dict[str, float]) -> dict[str, Any]:
    local, domain = fqdn.split("@", 1)
    subaddresses = {}
    for name, canonical in sorted(SUBADDRESS_NAMES.items()):
        queue = "in" if canonical == "owner" else SUBADDRESS_QUEUES[canonical]
        subaddresses[name] = {"address": f"{local}-{name}@{domain}", "queue": queue}
    return {
        "list_id": list_id,
        "posting_address": fqdn,
        "queue": "in",
        "subaddresses": subaddresses,
        "paused": list_id in paused,
        "paused_since": paused.get(list_id),
    }


class _Auth:
    """Bearer token (or HTTP Basic with the token as password) on all but health."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.token is None or req.path in ("/v1/health",):
            return
        header = req.get_header("Authorization") or ""
        scheme, _, value = header.partition(" ")
        given = None
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip()).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                given = None
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise falcon.HTTPUnauthorized(
                title="Authentication required",
                description="Send 'Authorization: Bearer TOKEN' ([api] token or "
                "MMGATE_API_TOKEN), or HTTP Basic with the token as password.",
                challenges=['Bearer realm="mmgate"', 'Basic realm="mmgate"'],
            )


def _int_param(req: falcon.Request, name: str, default: int, low: int, high: int) -> int:
    raw = req.get_param(name)
    if raw is None:
        return default
    # isascii(): "²" is a digit to str.isdigit() but not to int()
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise falcon.HTTPBadRequest(
            title="Bad parameter", description=f"{name} must be a whole number {low}..{high}"
        )
    return int(raw)


class Resources:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.store = Store(settings.store_url)
        self.mailman = _Mailman(settings.backend, settings.snapshot_ttl)
        self.paused = PausedLists(settings.store_url, ttl=0.0)

    def _find(self, name: str) -> tuple[Snapshot, str, str]:
        snap = self.mailman.snapshot()
        key = name.lower()
        if key in snap.lists:
            return snap, key, snap.lists[key]
        for fqdn, list_id in snap.lists.items():
            if list_id == key:
                return snap, fqdn, list_id
        raise falcon.HTTPNotFound(
            title="No such list", description=f"{name!r} is neither a list id nor a posting address"
        )

    # GET /v1/health
    def on_get_health(self, req: falcon.Request, resp: falcon.Response) -> None:
        out: dict[str, Any] = {}
        try:
            snap = self.mailman.snapshot()
            out["mailman"] = {
                "ok": self.mailman.error is None,
                "lists": len(snap.lists),
                "error": self.mailman.error,
            }
        except falcon.HTTPServiceUnavailable as exc:
            out["mailman"] = {"ok": False, "error": exc.description}
        try:
            each = self.store.gateways()
            out["store"] = {"ok": True}
            mine = self.settings.gateway
            ages = [
                g["heartbeat_age"]
                for name, g in each.items()
                if g["heartbeat_age"] is not None and (mine is None or name == mine)
            ]
            age = min(ages) if ages else None
            out["smtp"] = {
                "up": age is not None and age < HEARTBEAT_FRESH,
                "heartbeat_age": age,
                "gateway": mine,
            }
            out["gateways"] = {
                name: {
                    "up": g["heartbeat_age"] is not None and g["heartbeat_age"] < HEARTBEAT_FRESH,
                    "heartbeat_age": g["heartbeat_age"],
                }
                for name, g in each.items()
                if name
            }
        except Exception as exc:
            out["store"] = {"ok": False, "error": str(exc)}
            out["smtp"] = {"up": None}
        ok = out["mailman"]["ok"] and out["store"]["ok"] and out["smtp"]["up"]
        out["status"] = "ok" if ok else "degraded"
        # A load balancer or monitor reads the status code, not the body.
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = out

    # HEAD /v1/health: the same answer without a body (RFC 9110 9.3.2)
    def on_head_health(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get_health(req, resp)

    # GET /v1/lists
    def on_get_lists(self, req: falcon.Request, resp: falcon.Response) -> None:
        snap = self.mailman.snapshot()
        paused = self.store.paused()
        resp.media = {
            "entries": [
                _list_view(snap, fqdn, list_id, paused)
                for fqdn, list_id in sorted(snap.lists.items())
            ]
        }

    # GET /v1/lists/{name}
    def on_get_list(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        snap, fqdn, list_id = self._find(name)
        resp.media = _list_view(snap, fqdn, list_id, self.store.paused())

    # PUT and DELETE /v1/lists/{name}/pause
    def on_put_pause(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _, _, list_id = self._find(name)
        since = self.store.set_paused(list_id, True)
        resp.media = {"list_id": list_id, "paused": True, "paused_since": since}

    def on_delete_pause(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _, _, list_id = self._find(name)
        self.store.set_paused(list_id, False)
        resp.media = {"list_id": list_id, "paused": False, "paused_since": None}

    # GET /v1/route?address=
    def on_get_route(self, req: falcon.Request, resp: falcon.Response) -> None:
        address = req.get_param("address")
        if not address:
            raise falcon.HTTPBadRequest(title="Missing parameter", description="address=ADDR")
        client = req.get_param("client") or "127.0.0.1"
        # A malformed address is answered as RCPT would answer it (reject,
        # 501 5.1.3), which is also what `mmgate route` prints.
        router = Router(
            self.mailman.snapshot(),
            self.settings.policy,
            self.settings.upstream,
            paused=self.paused,
            stale_after=self.settings.stale_after,
        )
        resp.media = router.verdict(address, client=client).as_dict()

    # GET /v1/stats
    def on_get_stats(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.store.stats()

    # GET /v1/messages
    def on_get_messages(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = _int_param(req, "limit", 50, 1, 1000)
        offset = _int_param(req, "offset", 0, 0, 10**9)
        outcome = req.get_param("outcome")
        if outcome not in (None, "accepted", "temporary", "refused"):
            raise falcon.HTTPBadRequest(
                title="Bad parameter", description="outcome is accepted, temporary or refused"
            )
        list_id = req.get_param("list")
        if list_id is not None:
            list_id = self._find(list_id)[2]
        total, entries = self.store.messages(
            limit=limit, offset=offset, list_id=list_id, outcome=outcome
        )
        resp.media = {"total": total, "limit": limit, "offset": offset, "entries": entries}

    # POST /v1/refresh
    def on_post_refresh(self, req: falcon.Request, resp: falcon.Response) -> None:
        requested = self.store.request_refresh()
        snap = self.mailman.snapshot(fresh=True)
        resp.status = falcon.HTTP_202
        resp.media = {"requested_at": requested, "lists": len(snap.lists)}

    # GET /v1/openapi.json
    def on_get_openapi(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = spec()


def create_app(settings: ApiSettings | None = None) -> falcon.App[Any, Any]:
    """The admin API as a WSGI app; settings from the environment if omitted."""
    settings = settings or ApiSettings.from_environment()
    resources = Resources(settings)
    app = falcon.App(middleware=[_Auth(settings.token)])
    app.add_route("/v1/health", resources, suffix="health")
    app.add_route("/v1/lists", resources, suffix="lists")
    app.add_route("/v1/lists/{name}", resources, suffix="list")
    app.add_route("/v1/lists/{name}/pause", resources, suffix="pause")
    app.add_route("/v1/route", resources, suffix="route")
    app.add_route("/v1/stats", resources, suffix="stats")
    app.add_route("/v1/messages", resources, suffix="messages")
    app.add_route("/v1/refresh", resources, suffix="refresh")
    app.add_route("/v1/openapi.json", resources, suffix="openapi")
    return app
