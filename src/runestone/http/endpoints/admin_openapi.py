"""``GET /admin/openapi.json``: the admin API described as OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

import orjson

from runestone._version import __version__
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
from runestone.http.endpoints._admin_access import Refusals, operator_of

_ERROR = {"$ref": "#/components/responses/Error"}
_BUDGET = {
    "type": "object",
    "required": ["usd", "per"],
    "properties": {
        "usd": {"type": "number", "exclusiveMinimum": 0},
        "per": {"enum": ["minute", "hour", "day", "week", "month"]},
        "rolling": {"type": "boolean"},
        "alerts": {"type": "array", "items": {"type": "number", "minimum": 1, "maximum": 100}},
    },
}
_LIMITS = {
    "rpm": {"type": "integer", "minimum": 1},
    "tpm": {"type": "integer", "minimum": 1},
    "max_parallel": {"type": "integer", "minimum": 1},
    "budgets": {"type": "array", "items": {"$ref": "#/components/schemas/Budget"}},
    "metadata": {"type": "object"},
    "blocked": {"type": "boolean"},
    # Names of the alias file's guards its requests pass through.
    "guards": {"type": "array", "items": {"type": "string"}},
}
_KEY_SETTINGS = _LIMITS | {
    "models": {"type": "array", "items": {"type": "string"}},
    "expires": {"type": "string", "format": "date"},
    "team": {"type": "string"},
    "role": {"enum": ["client", "team_admin", "admin"]},
    "hosted_tools": {"enum": ["drop", "refuse"]},
    "end_user_budget": {"$ref": "#/components/schemas/Budget"},
}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}


def _op(summary: str, body: str | None = None, answer: str = "Key", status: str = "200") -> Any:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {
                "description": summary,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{answer}"}}
                },
            },
            "400": _ERROR,
            "401": _ERROR,
            "403": _ERROR,
            "404": _ERROR,
            "409": _ERROR,
            "429": _ERROR,
        },
    }
    if body is not None:
        schema = {"$ref": f"#/components/schemas/{body}"}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def _path_id(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def document() -> dict[str, Any]:
    """The whole document (the same for every caller)."""
    key_id, team_id = _path_id("key_id"), _path_id("team_id")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Runestone admin API", "version": __version__},
        "security": [{"bearer": []}],
        "paths": {
            "/admin/keys": {
                "get": _op("List keys (the file's and the API's)", answer="KeyList"),
                "post": _op(
                    "Create a key; the answer has its secret, once",
                    "NewKey",
                    "KeyWithSecret",
                    "201",
                ),
            },
            "/admin/keys/{key_id}": {
                "parameters": key_id,
                "get": _op("Read a key ('self': the calling key)"),
                "patch": _op("Change a key's settings, metadata or blocked", "KeyChanges"),
                "delete": _op("Revoke a key"),
            },
            "/admin/keys/{key_id}/rotate": {
                "parameters": key_id,
                "post": _op(
                    "A new secret; the old one works for grace_seconds", "Rotation", "KeyWithSecret"
                ),
            },
            "/admin/keys/{key_id}/usage": {
                "parameters": key_id,
                "get": _op("A key's limits and spend", answer="Usage"),
            },
            "/admin/teams": {
                "get": _op("List teams", answer="TeamList"),
                "post": _op("Create a team", "NewTeam", "Team", "201"),
            },
            "/admin/teams/{team_id}": {
                "parameters": team_id,
                "get": _op("Read a team", answer="Team"),
                "patch": _op("Change a team's limits, metadata or blocked", "TeamChanges", "Team"),
                "delete": _op("Delete a team without keys", answer="Team"),
            },
            "/admin/audit": {"get": _op("The audit log, newest first", answer="Audit")},
            "/admin/cache": {
                "delete": _op("Forget cached answers: ?key, ?team, ?alias, ?all", answer="Any")
            },
            "/admin/usage": {
                "get": _op("Spend per key, team, model, end user and tag", answer="Usage")
            },
            "/admin/openapi.json": {"get": _op("This document", answer="Any")},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "Runestone's error envelope",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "schemas": {
                "Any": {"type": "object"},
                "Budget": _BUDGET,
                "NewKey": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": _ID} | _KEY_SETTINGS,
                },
                "KeyChanges": {"type": "object", "properties": _KEY_SETTINGS},
                "Rotation": {
                    "type": "object",
                    "properties": {"grace_seconds": {"type": "number", "minimum": 0}},
                },
                "Key": {
                    "type": "object",
                    "properties": {
                        "id": _ID,
                        "source": {"enum": ["file", "api"]},
                        "team": {"type": ["string", "null"]},
                        "role": {"enum": ["client", "team_admin", "admin"]},
                        "settings": {"type": "object"},
                        "metadata": {"type": "object"},
                        "blocked": {"type": "boolean"},
                        "revoked": {"type": "boolean"},
                    },
                },
                "KeyWithSecret": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Key"},
                        {"type": "object", "properties": {"secret": {"type": "string"}}},
                    ]
                },
                "KeyList": {
                    "type": "object",
                    "properties": {
                        "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
                        "next": {"type": ["string", "null"]},
                    },
                },
                "NewTeam": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": _ID} | _LIMITS,
                },
                "TeamChanges": {"type": "object", "properties": _LIMITS},
                "Team": {
                    "type": "object",
                    "properties": {"id": _ID, "source": {"enum": ["file", "api"]}},
                },
                "TeamList": {
                    "type": "object",
                    "properties": {
                        "teams": {"type": "array", "items": {"$ref": "#/components/schemas/Team"}}
                    },
                },
                "Audit": {
                    "type": "object",
                    "properties": {"entries": {"type": "array"}, "next": {}},
                },
                "Usage": {"type": "object"},
                "Error": {"type": "object", "properties": {"error": {"type": "object"}}},
            },
        },
    }


class OpenApiEndpoint:
    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals
        self._body = orjson.dumps(document())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refusals.check(scope)
        operator_of(scope, "read the admin API's description")
        await send_json(send, 200, self._body, [(b"content-type", JSON)])
