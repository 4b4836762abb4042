"""Keys, rate limits and budgets for many teams, exact across processes and replicas.

The exchange calls one pair: ``Access.admit`` before a request goes upstream and
``Access.settle`` when it is over. The keys and limits come from the alias table
(``runestone.aliases``: the file's, with the admin API's merged in by
``runestone.keyring``); the counters from a ``Store``: SQLite on one host
(``RUNESTONE_STATE_PATH``), Redis for several (``RUNESTONE_REDIS_URL``).

Modules: ``_limits`` (limits as checks), ``_worst_case`` (the most a request
can use), ``_windows`` (calendar and rolling windows), ``_store`` (the store interface),
``_sqlite`` (with ``_sqlite_schema``) and ``_redis`` (the two stores), ``_gate`` (admit
and settle), ``_admission`` (what an admitted request holds), ``_booking`` (what a
settled request books), ``_attribution`` (end users and tags), ``_refusals`` (the errors
and rate headers), ``_report`` (usage), ``_keygen`` (new keys).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runestone.access._admission import Admission, rate_headers_for
from runestone.access._attribution import end_user_of, tags_of
from runestone.access._booking import Spent
from runestone.access._gate import Access, check_model
from runestone.access._keygen import digest, new_key
from runestone.access._refusals import rate_headers
from runestone.access._report import usage_report
from runestone.access._store import StateError, Store


def default_state_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    return Path(base) / "runestone" / "state.sqlite3"


def open_store(*, redis_url: str | None, prefix: str, state_path: Path) -> Store:
    """Redis at ``redis_url`` when given, else the SQLite file at ``state_path``."""
    if redis_url:
        from runestone.access._redis import RedisStore

        return RedisStore(redis_url, prefix=prefix)
    from runestone.access._sqlite import SQLiteStore

    return SQLiteStore(state_path)


__all__ = [
    "Access",
    "Admission",
    "Spent",
    "StateError",
    "Store",
    "check_model",
    "digest",
    "end_user_of",
    "new_key",
    "open_store",
    "rate_headers",
    "rate_headers_for",
    "tags_of",
    "usage_report",
]
