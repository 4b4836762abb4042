"""What the console page shows, as JSON: traffic, the alias table, keys, failures.

Pure functions of the stats, the alias table, the breakers and the usage report; the
endpoint gathers those and calls them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from runestone.aliases import AliasTable, ReloadStatus
from runestone.console._stats import SLOT_SECONDS, WINDOWS, ConsoleStats, percentile

__all__ = ["WINDOWS", "aliases", "failures", "traffic", "worker"]
#: The codes that say a client key was refused (rather than a provider failing).
REFUSALS = frozenset(
    {"unauthorized", "key_expired", "model_not_allowed", "rate_limited", "budget_exceeded"}
)


#: Models listed by cost; the rest are summed as ``other``.
MODELS_SHOWN = 20


def _top(models: dict[str, list[float]], count: int) -> list[tuple[str, list[float]]]:
    """The ``count`` costliest models, and the rest summed as ``other``."""
    ranked = sorted(models.items(), key=lambda item: (-item[1][2], -item[1][3]))
    shown = [(name, n) for name, n in ranked[:count] if name != "other"]
    rest = [n for name, n in ranked if (name, n) not in shown]
    if rest:
        shown.append(("other", [sum(column) for column in zip(*rest, strict=True)]))
    return shown


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def traffic(stats: ConsoleStats, minutes: int, streams_in_flight: int) -> dict[str, Any]:
    now = time.time()
    tally = stats.window(minutes, now)
    # The window is as long as it asked for, or as the process has run.
    seconds = min(minutes * 60.0, max(now - stats.started, 1.0))
    requests = tally.requests
    return {
        "window_minutes": minutes,
        "seconds": round(seconds, 1),
        "requests": requests,
        "requests_per_second": round(requests / seconds, 3),
        "error_ratio": round(tally.errors / requests, 4) if requests else 0.0,
        "errors_by_code": dict(sorted(tally.codes.items(), key=lambda item: -item[1])),
        "in_flight": {"requests": max(stats.in_flight, 0), "streams": streams_in_flight},
        "stream_outcomes": tally.outcomes,
        "series": [
            {
                "alias": alias,
                "provider": provider,
                "requests": s.requests,
                "error_ratio": round(s.errors / s.requests, 4) if s.requests else 0.0,
                "latency_ms": {
                    f"p{int(q * 100)}": _ms(percentile(s.latency, q)) for q in (0.5, 0.95, 0.99)
                },
                "ttft_ms": {f"p{int(q * 100)}": _ms(percentile(s.ttft, q)) for q in (0.5, 0.95)},
                "overhead_ms": {
                    f"p{int(q * 100)}": _ms(percentile(s.overhead, q)) for q in (0.5, 0.99)
                },
            }
            for (alias, provider), s in sorted(tally.series.items(), key=lambda i: -i[1].requests)
        ],
        "models": [
            {
                "model": model,
                "requests": int(n[3]),
                "input_tokens": int(n[0]),
                "output_tokens": int(n[1]),
                "cost_usd": round(n[2], 6),
            }
            for model, n in _top(tally.models, MODELS_SHOWN)
        ],
        # [slot start, requests/s, error ratio] per slot of the window, empty ones too.
        "timeline": [
            [start, round(count / SLOT_SECONDS, 3), round(errors / count, 4) if count else 0.0]
            for start, count, errors in stats.timeline(minutes, now)
        ],
    }


def aliases(
    table: AliasTable,
    status: ReloadStatus,
    breakers: list[dict[str, object]],
    stats: ConsoleStats,
) -> dict[str, Any]:
    states: dict[str, dict[str, object]] = {}
    for breaker in breakers:
        # The breaker's key is provider:model@base_url: the URL is not shown.
        states[str(breaker["target"]).split("@http", 1)[0]] = breaker
    recent = stats.window(5).targets
    rows = []
    everything = [*table.aliases.values(), *(alias for _, alias in table.patterns)]
    for alias in everything:
        targets = []
        for each in alias.targets:
            spec = str(each)
            breaker = states.get(spec, {})
            requests, errors = recent.get(spec, (0, 0))
            targets.append(
                {
                    "target": spec,
                    "weight": each.weight,
                    "breaker": breaker.get("state", "closed"),
                    "retry_in": breaker.get("retry_in"),
                    "requests_5m": requests,
                    "error_ratio_5m": round(errors / requests, 4) if requests else None,
                }
            )
        rows.append(
            {
                "name": alias.name,
                "line": alias.line,
                "strategy": alias.policy.strategy,
                "policy": alias.policy.describe(),
                "targets": targets,
            }
        )
    return {
        "version": status.version,
        "source": status.source,
        "ok": status.ok,
        "loaded_at": status.loaded_at or None,
        "last_attempt_at": status.last_attempt_at or None,
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
        "error": status.error,
        "aliases": rows,
    }


def failures(stats: ConsoleStats) -> list[dict[str, Any]]:
    return [
        {
            "at": round(f.at, 3),
            "request_id": f.request_id,
            "route": f.route,
            "alias": f.alias,
            "target": f.target,
            "status": f.status,
            "code": f.code,
            "attempts": f.attempts,
            "key": None if f.key == "-" else f.key,
        }
        for f in reversed(stats.failures)
    ]


def worker() -> dict[str, Any]:
    """Which process answered: under --workers N each counts its own traffic."""
    several = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return {"pid": os.getpid(), "one_of_several": several}
