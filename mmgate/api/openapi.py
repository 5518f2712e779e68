"""The OpenAPI 3 document of the admin API, checked against the app by tests
(schemathesis generates requests from it and validates every response)."""

from __future__ import annotations

from typing import Any

from mmgate._version import __version__
from mmgate.router import Action

_ERROR = {"$ref": "#/components/schemas/Error"}
_LIST_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "list id or posting address",
    "schema": {"type": "string"},
}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ERRORS = {
    "400": _response("bad input", _ERROR),
    "401": _response("authentication required", _ERROR),
    "404": _response("no such list", _ERROR),
    "503": _response("Mailman unavailable", _ERROR),
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    status: str = "200",
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {status: _response(summary, ok), **_ERRORS},
    }
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def spec() -> dict[str, Any]:
    nullable_number = {"type": ["number", "null"]}
    lst = {
        "type": "object",
        "required": ["list_id", "posting_address", "queue", "subaddresses", "paused"],
        "properties": {
            "list_id": {"type": "string"},
            "posting_address": {"type": "string"},
            "queue": {"type": "string"},
            "subaddresses": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["address", "queue"],
                    "properties": {"address": {"type": "string"}, "queue": {"type": "string"}},
                },
            },
            "paused": {"type": "boolean"},
            "paused_since": nullable_number,
        },
    }
    health_body = {
        "type": "object",
        "required": ["status", "mailman", "store", "smtp"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "mailman": {"type": "object"},
            "store": {"type": "object"},
            "smtp": {"type": "object"},
            "gateways": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    }
    health = {
        "summary": "liveness and dependencies: 200 when all is well, 503 when degraded",
        "security": [],
        "responses": {
            "200": _response("everything the gateway depends on answers", health_body),
            "503": _response("degraded: see which part", health_body),
        },
    }
    pause = {
        "type": "object",
        "required": ["list_id", "paused"],
        "properties": {
            "list_id": {"type": "string"},
            "paused": {"type": "boolean"},
            "paused_since": nullable_number,
        },
    }
    counters = {"type": "object", "additionalProperties": {"type": "integer"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mmgate admin API", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["title"],
                    "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                }
            },
        },
        "security": [{"bearer": []}, {"basic": []}],
        "paths": {
            "/v1/health": {
                "get": health,
                "head": {**health, "summary": "liveness, as a status code only"},
            },
            "/v1/lists": {
                "get": _op(
                    "every list the gateway routes",
                    {
                        "type": "object",
                        "required": ["entries"],
                        "properties": {"entries": {"type": "array", "items": lst}},
                    },
                )
            },
            "/v1/lists/{name}": {"get": _op("one list", lst, params=[_LIST_PARAM])},
            "/v1/lists/{name}/pause": {
                "put": _op("pause a list: RCPT to it gets 451 4.2.1", pause, params=[_LIST_PARAM]),
                "delete": _op("resume a list", pause, params=[_LIST_PARAM]),
            },
            "/v1/route": {
                "get": _op(
                    "what the gateway would do with a recipient",
                    {
                        "type": "object",
                        "required": ["address", "action"],
                        "properties": {
                            "address": {"type": "string"},
                            "action": {"enum": [a.value for a in Action]},
                        },
                    },
                    params=[
                        {
                            "name": "address",
                            "in": "query",
                            "required": True,
                            "description": "a malformed address is answered as RCPT answers it",
                            "schema": {"type": "string", "minLength": 1},
                        },
                        {
                            "name": "client",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                )
            },
            "/v1/stats": {
                "get": _op(
                    "counters since start and totals: all gateways sharing the store, and each",
                    {
                        "type": "object",
                        "required": ["since_start", "total"],
                        "properties": {
                            "since_start": counters,
                            "total": counters,
                            "started_at": nullable_number,
                            "gateways": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "object",
                                    "properties": {
                                        "since_start": counters,
                                        "total": counters,
                                        "started_at": nullable_number,
                                        "heartbeat_age": nullable_number,
                                    },
                                },
                            },
                        },
                    },
                )
            },
            "/v1/messages": {
                "get": _op(
                    "the transaction journal, newest first",
                    {
                        "type": "object",
                        "required": ["total", "entries"],
                        "properties": {
                            "total": {"type": "integer"},
                            "limit": {"type": "integer"},
                            "offset": {"type": "integer"},
                            "entries": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    params=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
                        },
                        {"name": "list", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "outcome",
                            "in": "query",
                            "schema": {"enum": ["accepted", "temporary", "refused"]},
                        },
                    ],
                )
            },
            "/v1/refresh": {
                "post": _op(
                    "re-read lists and domains from Mailman now",
                    {
                        "type": "object",
                        "required": ["requested_at"],
                        "properties": {
                            "requested_at": {"type": "number"},
                            "lists": {"type": "integer"},
                        },
                    },
                    status="202",
                )
            },
            "/v1/openapi.json": {"get": _op("this document", {"type": "object"})},
        },
    }
