"""How the admin API shows keys and teams: the API's records and the file's entries in
one shape (``source`` says which), never a secret nor its digest."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from runestone.aliases import KeySpec, TeamSpec
from runestone.aliases._access_section import valid_id
from runestone.errors import error_for
from runestone.keyring import Record, settings_of

#: The most metadata one key or team may carry, as JSON.
MAX_METADATA_BYTES = 4096


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return (
        dt.datetime.fromtimestamp(moment, dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def key_view(record: Record | None, spec: KeySpec | None, now: float) -> dict[str, Any]:
    """A key from the API (``record``) or from the alias file (``spec``)."""
    if record is None:
        assert spec is not None
        return {
            "id": spec.id,
            "source": "file",
            "team": spec.team,
            "role": spec.role,
            "settings": settings_of(spec),
            "metadata": {},
            "blocked": spec.blocked,
            "revoked": False,
        }
    settings = record["settings"]
    return {
        "id": record["id"],
        "source": "api",
        "team": settings.get("team"),
        "role": settings.get("role", "client"),
        "settings": settings,
        "metadata": record.get("metadata") or {},
        "blocked": bool(record.get("blocked")),
        "revoked": bool(record.get("revoked_at")),
        "revoked_at": iso(record.get("revoked_at")),
        "created_at": iso(record.get("created_at")),
        "created_by": record.get("created_by"),
        "updated_at": iso(record.get("updated_at")),
        "updated_by": record.get("updated_by"),
        "rotated_at": iso(record.get("rotated_at")),
        "old_secrets_work_until": [
            iso(old["until"]) for old in record.get("previous", ()) if old["until"] > now
        ],
    }


def team_view(record: Record | None, spec: TeamSpec | None, keys: int) -> dict[str, Any]:
    if record is None:
        assert spec is not None
        found = {"id": spec.id, "source": "file", "settings": settings_of(spec), "metadata": {}}
        return found | {"blocked": spec.blocked, "deleted": False, "keys": keys}
    return {
        "id": record["id"],
        "source": "api",
        "settings": record["settings"],
        "metadata": record.get("metadata") or {},
        "blocked": bool(record.get("blocked")),
        "deleted": bool(record.get("deleted_at")),
        "keys": keys,
        "created_at": iso(record.get("created_at")),
        "created_by": record.get("created_by"),
        "updated_at": iso(record.get("updated_at")),
        "updated_by": record.get("updated_by"),
    }


def split_body(
    body: dict[str, Any], settings_names: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any] | None, bool | None]:
    """A create or update body: its settings, its metadata, and ``blocked``."""
    known = settings_names | {"metadata", "blocked"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise error_for(
            "invalid_request",
            f"unknown fields {unknown} (known: id, {', '.join(sorted(known))})",
        )
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or len(orjson.dumps(metadata)) > MAX_METADATA_BYTES
    ):
        raise error_for(
            "invalid_request",
            f"metadata must be a JSON object of at most {MAX_METADATA_BYTES} bytes",
            param="metadata",
        )
    blocked = body.get("blocked")
    if blocked is not None and not isinstance(blocked, bool):
        raise error_for("invalid_request", "blocked must be true or false", param="blocked")
    settings = {k: v for k, v in body.items() if k in settings_names}
    return settings, metadata, blocked


def patched(settings: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``changes`` applied: a null removes a setting."""
    merged = dict(settings)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def new_id(body: dict[str, Any]) -> str:
    """The ``id`` of a create body (taken out of it), or the client's error."""
    found = body.pop("id", None)
    if not valid_id(found):
        raise error_for(
            "invalid_request",
            "id: 1-64 letters, digits and '.-_', first a letter or digit",
            param="id",
        )
    assert isinstance(found, str)
    return found


def change_of(
    kind: str, changes: dict[str, Any], metadata: dict[str, Any] | None, blocked: bool | None
) -> tuple[str, dict[str, Any]]:
    """An update's audit action (``key.block``, ``team.update``...) and what it changed."""
    what: dict[str, Any] = {"settings": changes} if changes else {}
    if metadata is not None:
        what["metadata"] = metadata
    if blocked is not None:
        what["blocked"] = blocked
    verb = "block" if blocked else "unblock" if blocked is False else "update"
    return f"{kind}.{verb}", what
