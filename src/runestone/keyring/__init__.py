"""Keys and teams made at runtime (the admin API), the audit log, and alerts' claims.

The alias file's keys stay (GitOps) and are read-only through the API; the API's live
in the state store (SQLite on one host, Redis across replicas) and are merged into the
alias table in use (``Keyring``), so that authentication, limits and usage read one
table whoever declared the key. Ids are unique across both.

Modules: ``_store`` (the interface), ``_sqlite`` and ``_redis`` (the stores),
``_records`` (records checked, parsed and merged), ``_keyring`` (the live keyring).
"""

from __future__ import annotations

from pathlib import Path

from runestone.keyring._keyring import MAX_GRACE_SECONDS, POLL_SECONDS, Keyring
from runestone.keyring._records import Record, settings_of
from runestone.keyring._store import MAX_AUDIT_PAGE, KeyringStore


def open_keyring(*, redis_url: str | None, prefix: str, state_path: Path) -> KeyringStore:
    """Redis at ``redis_url`` when given, else ``keys.sqlite3`` beside ``state_path``."""
    if redis_url:
        from runestone.keyring._redis import RedisKeyring

        return RedisKeyring(redis_url, prefix=prefix)
    from runestone.keyring._sqlite import SQLiteKeyring

    return SQLiteKeyring(state_path.with_name("keys.sqlite3"))


__all__ = [
    "MAX_AUDIT_PAGE",
    "MAX_GRACE_SECONDS",
    "POLL_SECONDS",
    "Keyring",
    "KeyringStore",
    "Record",
    "open_keyring",
    "settings_of",
]
