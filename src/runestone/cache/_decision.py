"""Whether a request may be answered from the cache, and under which key.

The key is a digest of the request as its upstream would see it: the alias and its
targets, the operation, whether it streams, and every field of the body but those that
cannot change the answer (who it is for, what to store, the prompt cache's own hint),
scoped to the client key (or its team, or everyone, when configured). Two requests that
differ in anything else never share an entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import orjson

from runestone.aliases import AliasTable, CacheSpec, KeySpec

State = Literal["hit", "miss", "bypass"]
#: Fields that change nothing in the answer. (A stream's ``stream_options`` stand for
#: one thing that does change its bytes: whether a usage chunk ends it.)
IGNORED = frozenset(
    {"user", "safety_identifier", "metadata", "stream_options", "prompt_cache_key", "store"}
)
#: Bumped when what a key covers changes: older entries are then never read.
_VERSION = 1


@dataclass(slots=True)
class Decision:
    """What the cache does for one request."""

    spec: CacheSpec
    key: str
    scope: str
    alias: str
    stream: bool
    #: Look for a stored answer (``Cache-Control: no-cache`` says not to).
    read: bool
    #: Store the answer (``no-store`` says not to).
    write: bool
    state: State = "miss"


def decide(
    table: AliasTable,
    key: KeySpec | None,
    owner: str,
    operation: str,
    body: dict[str, object],
    cache_control: str | None,
    guarded: str = "",
) -> Decision | None:
    """None when no cache applies to the request; else what to do with it.

    ``guarded`` names the output guards its answer passes (and how they are set): an
    answer kept under other guards, or none, is not this request's answer.
    """
    if operation == "count_tokens":
        return None
    model = str(body.get("model"))
    alias = table.match(model)
    spec = alias.cache if alias is not None and alias.cache is not None else None
    if spec is None and key is not None:
        spec = key.cache
    if spec is None:
        return None
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    write = "no-store" not in directives
    read = write and "no-cache" not in directives
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and temperature > 0 and not spec.temperature:
        read = write = False  # a sampled answer is one of many: not the answer
    if operation == "responses" and body.get("store") is not False:
        read = write = False  # a stored response has an id of its own: made fresh
    scope = owner
    if spec.scope == "team" and key is not None and key.team:
        scope = f"team:{key.team}"
    elif spec.scope == "global":
        scope = "global"
    stream = body.get("stream") is True
    options = body.get("stream_options")
    usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    targets = [str(t) for t in alias.every_target] if alias is not None else []
    canonical = {k: v for k, v in body.items() if k not in IGNORED}
    digest = hashlib.sha256(
        orjson.dumps(
            [_VERSION, scope, operation, model, targets, stream, usage, guarded, canonical],
            option=orjson.OPT_SORT_KEYS,
        )
    ).hexdigest()
    name = alias.name if alias is not None else model
    state: State = "miss" if read else "bypass"
    return Decision(spec, digest, scope, name, stream, read, write, state)
