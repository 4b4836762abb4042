"""Model aliases: loaded from YAML, validated whole, hot-reloaded without a restart.

Lookups read one reference to an immutable ``AliasTable`` and do one dict lookup, so a
request never sees a half-loaded table, and a reload never blocks a lookup. A reload
builds a whole new table first; an invalid file keeps the last good one.

Alias names are case-sensitive, like the model names of every provider: ``fast`` and
``Fast`` are different names. (An unknown name's error suggests a near match.)

>>> store = AliasStore(DEFAULT_ALIASES_PATH)
>>> store.load()
>>> str(store.table.get("fast").targets[0])
'groq:llama3-8b-8192'

Modules: ``_schema`` (the table's types), ``_file`` and ``_sections`` (text to table),
``_policy`` (per-alias resilience keys), ``_yaml_nodes`` (YAML with line numbers),
``_guard_specs`` and ``_guards_section`` (the guards), ``_watch`` (file events and
polling), ``_store`` (the live table and its reloads).
"""

from runestone.aliases._file import parse_alias_file
from runestone.aliases._guard_specs import GuardSpec, ModerationCheck, WebhookCheck
from runestone.aliases._keys import (
    PERIODS,
    AccessSettings,
    AccessTable,
    Budget,
    CacheSpec,
    KeySpec,
    Limits,
    TeamSpec,
)
from runestone.aliases._policy import DEFAULT_POLICY, Policy, Strategy
from runestone.aliases._schema import (
    Alias,
    AliasFileError,
    AliasTable,
    Problem,
    SpecError,
    Target,
    parse_spec,
)
from runestone.aliases._store import (
    DEFAULT_ALIASES_PATH,
    AliasStore,
    ReloadStatus,
    load_alias_file,
)
from runestone.aliases._watch import WATCH_MODES, WatchMode

__all__ = [
    "DEFAULT_ALIASES_PATH",
    "DEFAULT_POLICY",
    "PERIODS",
    "WATCH_MODES",
    "AccessSettings",
    "AccessTable",
    "Alias",
    "AliasFileError",
    "AliasStore",
    "AliasTable",
    "Budget",
    "CacheSpec",
    "GuardSpec",
    "KeySpec",
    "Limits",
    "ModerationCheck",
    "Policy",
    "Problem",
    "ReloadStatus",
    "SpecError",
    "Strategy",
    "Target",
    "TeamSpec",
    "WatchMode",
    "WebhookCheck",
    "load_alias_file",
    "parse_alias_file",
    "parse_spec",
]
