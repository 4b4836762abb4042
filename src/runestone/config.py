"""Settings from the environment, read and validated once at start-up.

Every ``RUNESTONE_*`` variable is read here and nowhere else (a test holds the package
to it): the rest of the code is handed ``Settings``, or the values it needs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from runestone.access import Store, default_state_path, open_store
from runestone.alerts import Webhook, parse_webhooks
from runestone.aliases import DEFAULT_ALIASES_PATH, WATCH_MODES, AliasStore, WatchMode
from runestone.aliases._policy import FAILOVER_SECONDS
from runestone.cache import CacheBounds, open_cache
from runestone.cache._store import CacheStore
from runestone.conversations import Bounds, ResponseStore, open_response_store
from runestone.keyring import KeyringStore, open_keyring
from runestone.providers.wire import WIRE_KINDS, WireKind
from runestone.routing.breakers import BreakerConfig

#: Every setting's variable: ``runestone serve`` refuses any other ``RUNESTONE_*`` name.
SETTING_NAMES = (
    "RUNESTONE_ADMIN_TOKEN",
    "RUNESTONE_ALERT_WEBHOOKS",
    "RUNESTONE_ALIASES_PATH",
    "RUNESTONE_BODY_TIMEOUT",
    "RUNESTONE_BREAKER_COOLDOWN",
    "RUNESTONE_BREAKER_FAILURES",
    "RUNESTONE_BREAKER_FAILURE_RATE",
    "RUNESTONE_BREAKER_HALF_OPEN_TRIALS",
    "RUNESTONE_CACHE_MAX_BYTES",
    "RUNESTONE_CACHE_MAX_ENTRIES",
    "RUNESTONE_CONNECT_TIMEOUT",
    "RUNESTONE_DRAIN_DELAY",
    "RUNESTONE_FAILOVER_SECONDS",
    "RUNESTONE_GATEWAY_MODE",
    "RUNESTONE_GRACEFUL_TIMEOUT",
    "RUNESTONE_HEADER_TIMEOUT",
    "RUNESTONE_HEARTBEAT_SECONDS",
    "RUNESTONE_HOST",
    "RUNESTONE_IDLE_TIMEOUT",
    "RUNESTONE_LOG_FORMAT",
    "RUNESTONE_MAX_ALIAS_DROP",
    "RUNESTONE_MAX_BODY_BYTES",
    "RUNESTONE_MAX_CONNECTIONS",
    "RUNESTONE_MAX_EVENT_BYTES",
    "RUNESTONE_MAX_HEADERS",
    "RUNESTONE_MAX_HEADER_BYTES",
    "RUNESTONE_MAX_UPSTREAM_BODY_BYTES",
    "RUNESTONE_METRICS_TOKEN",
    "RUNESTONE_PORT",
    "RUNESTONE_READ_TIMEOUT",
    "RUNESTONE_REDIS_PREFIX",
    "RUNESTONE_REDIS_URL",
    "RUNESTONE_RESPONSE_STORE_DAYS",
    "RUNESTONE_RESPONSE_STORE_MAX_BYTES",
    "RUNESTONE_RESPONSE_STORE_MAX_RESPONSES",
    "RUNESTONE_SERVICE_TOKEN",
    "RUNESTONE_START_DEGRADED",
    "RUNESTONE_STATE_PATH",
    "RUNESTONE_UPSTREAM_TRANSPORT",
    "RUNESTONE_URL",
    "RUNESTONE_USAGE_DRAIN_SECONDS",
    "RUNESTONE_WATCH",
    "RUNESTONE_WORKERS",
)


class ConfigError(ValueError):
    """A setting has a value Runestone cannot use; the message names the variable."""


@dataclass(frozen=True)
class EdgeLimits:
    """What ``runestone serve`` lets a client make it hold before any application code
    (and so before authentication) runs; see ``runestone.http._server``."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    #: Seconds a new connection may stay silent before it is closed.
    idle_timeout: float = 10.0
    #: Open connections per process; 0: half the process's descriptor limit.
    max_connections: int = 0


@dataclass(frozen=True)
class Settings:
    """Every ``RUNESTONE_*`` setting, with its default."""

    service_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 4001
    #: ``runestone serve`` worker processes (``--workers`` overrides it).
    workers: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    heartbeat_seconds: float = 15.0
    watch: WatchMode = "auto"
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    #: The upstream HTTP transport (``runestone.providers.wire``).
    upstream_transport: WireKind = "aiohttp"
    gateway_mode: bool = False
    gateway_url: str | None = None
    metrics_token: str | None = None
    admin_token: str | None = None
    #: Where budget alerts are posted (``RUNESTONE_ALERT_WEBHOOKS``).
    alert_webhooks: tuple[Webhook, ...] = ()
    log_json: bool = True
    breaker_failures: int = 5
    breaker_failure_rate: float = 0.5
    breaker_cooldown: float = 30.0
    breaker_half_open_trials: int = 1
    graceful_timeout: float = 30.0
    #: Seconds SIGTERM leaves the gateway serving, not ready, before it drains.
    drain_delay: float = 0.0
    max_upstream_body_bytes: int = 64 * 1024 * 1024
    max_event_bytes: int = 4 * 1024 * 1024
    #: Seconds a stream whose use is booked (a client key's) is read on after its
    #: client left, to learn the usage that comes at its end; 0 cuts it at once.
    usage_drain_seconds: float = 5.0
    edge: EdgeLimits = EdgeLimits()
    #: How long a silent or stalled target is given before the next target of an alias
    #: is tried; every default timeout of a policy is worked out from it.
    failover_seconds: float = FAILOVER_SECONDS
    #: The alias file (default: the packaged one) and the share of its aliases a reload
    #: may drop without ``allow_shrink: true``.
    aliases_path: Path = DEFAULT_ALIASES_PATH
    max_alias_drop: float = 0.5
    #: Where limits, budgets and spend are counted: Redis when set, else the state file.
    redis_url: str | None = None
    redis_prefix: str = "runestone"
    state_path: Path | None = None
    #: Start even when the configured store does not answer (it is tried again per
    #: request; the alias file's ``access`` section says what happens meanwhile).
    start_degraded: bool = False
    #: What the Responses API's store keeps (the oldest go first past any bound).
    response_store: Bounds = Bounds()  # noqa: RUF009 - frozen, as EdgeLimits
    #: What the exact response cache keeps (the oldest go first past either bound).
    cache_bounds: CacheBounds = CacheBounds()  # noqa: RUF009 - frozen, as EdgeLimits

    def alias_store(self, known_providers: Collection[str] | None = None) -> AliasStore:
        """The alias store these settings name (not loaded yet)."""
        return AliasStore(self.aliases_path, known_providers, max_drop=self.max_alias_drop)

    @property
    def store_name(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    def open_store(self, environ: Mapping[str, str] | None = None) -> Store:
        """The store of limits and spend these settings name (``environ`` for HOME)."""
        state = self.state_path or default_state_path(os.environ if environ is None else environ)
        return open_store(redis_url=self.redis_url, prefix=self.redis_prefix, state_path=state)

    def open_response_store(self, environ: Mapping[str, str] | None = None) -> ResponseStore:
        """The Responses API's store: beside the limits' (Redis, or the state file's
        directory)."""
        state = self.state_path or default_state_path(os.environ if environ is None else environ)
        return open_response_store(
            redis_url=self.redis_url,
            prefix=self.redis_prefix,
            state_path=state,
            bounds=self.response_store,
        )

    def open_cache(self, environ: Mapping[str, str] | None = None) -> CacheStore:
        """The exact response cache's store: beside the limits'."""
        state = self.state_path or default_state_path(os.environ if environ is None else environ)
        return open_cache(
            redis_url=self.redis_url,
            prefix=self.redis_prefix,
            state_path=state,
            bounds=self.cache_bounds,
        )

    def open_keyring(self, environ: Mapping[str, str] | None = None) -> KeyringStore:
        """The store of the API's keys and teams and of the audit log: beside the limits'."""
        state = self.state_path or default_state_path(os.environ if environ is None else environ)
        return open_keyring(redis_url=self.redis_url, prefix=self.redis_prefix, state_path=state)

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            failures=self.breaker_failures,
            failure_rate=self.breaker_failure_rate,
            cooldown=self.breaker_cooldown,
            half_open_trials=self.breaker_half_open_trials,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        watch = env.get("RUNESTONE_WATCH", "auto")
        if watch not in WATCH_MODES:
            raise ConfigError(f"RUNESTONE_WATCH must be one of {', '.join(WATCH_MODES)}")
        gateway_mode = _flag(env, "RUNESTONE_GATEWAY_MODE")
        gateway_url = env.get("RUNESTONE_URL") or None
        if gateway_mode and not gateway_url:
            raise ConfigError("RUNESTONE_GATEWAY_MODE=true needs RUNESTONE_URL")
        return cls(
            service_token=env.get("RUNESTONE_SERVICE_TOKEN") or None,
            host=env.get("RUNESTONE_HOST", cls.host),
            port=int(_number(env, "RUNESTONE_PORT", cls.port)),
            workers=int(_number(env, "RUNESTONE_WORKERS", cls.workers)),
            max_body_bytes=int(_number(env, "RUNESTONE_MAX_BODY_BYTES", cls.max_body_bytes)),
            heartbeat_seconds=_number(env, "RUNESTONE_HEARTBEAT_SECONDS", cls.heartbeat_seconds),
            watch=watch,
            connect_timeout=_number(env, "RUNESTONE_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=_number(env, "RUNESTONE_READ_TIMEOUT", cls.read_timeout),
            upstream_transport=_transport(env),
            gateway_mode=gateway_mode,
            gateway_url=gateway_url,
            metrics_token=env.get("RUNESTONE_METRICS_TOKEN") or None,
            admin_token=env.get("RUNESTONE_ADMIN_TOKEN") or None,
            alert_webhooks=_webhooks(env),
            log_json=_log_format(env) == "json",
            breaker_failures=int(_number(env, "RUNESTONE_BREAKER_FAILURES", cls.breaker_failures)),
            breaker_failure_rate=_number(
                env, "RUNESTONE_BREAKER_FAILURE_RATE", cls.breaker_failure_rate
            ),
            breaker_cooldown=_number(env, "RUNESTONE_BREAKER_COOLDOWN", cls.breaker_cooldown),
            breaker_half_open_trials=int(
                _number(env, "RUNESTONE_BREAKER_HALF_OPEN_TRIALS", cls.breaker_half_open_trials)
            ),
            graceful_timeout=_number(env, "RUNESTONE_GRACEFUL_TIMEOUT", cls.graceful_timeout),
            drain_delay=_number(env, "RUNESTONE_DRAIN_DELAY", cls.drain_delay, zero=True),
            max_upstream_body_bytes=int(
                _number(env, "RUNESTONE_MAX_UPSTREAM_BODY_BYTES", cls.max_upstream_body_bytes)
            ),
            max_event_bytes=int(_number(env, "RUNESTONE_MAX_EVENT_BYTES", cls.max_event_bytes)),
            usage_drain_seconds=_number(
                env, "RUNESTONE_USAGE_DRAIN_SECONDS", cls.usage_drain_seconds, zero=True
            ),
            edge=_edge(env),
            failover_seconds=_number(env, "RUNESTONE_FAILOVER_SECONDS", cls.failover_seconds),
            aliases_path=Path(env.get("RUNESTONE_ALIASES_PATH") or DEFAULT_ALIASES_PATH),
            max_alias_drop=_share(env, "RUNESTONE_MAX_ALIAS_DROP", cls.max_alias_drop),
            redis_url=env.get("RUNESTONE_REDIS_URL") or None,
            redis_prefix=env.get("RUNESTONE_REDIS_PREFIX") or cls.redis_prefix,
            state_path=Path(state) if (state := env.get("RUNESTONE_STATE_PATH")) else None,
            start_degraded=_flag(env, "RUNESTONE_START_DEGRADED"),
            response_store=_response_store(env),
            cache_bounds=_cache_bounds(env),
        )


def _cache_bounds(env: Mapping[str, str]) -> CacheBounds:
    default = CacheBounds()
    return CacheBounds(
        max_entries=int(_number(env, "RUNESTONE_CACHE_MAX_ENTRIES", default.max_entries)),
        max_bytes=int(_number(env, "RUNESTONE_CACHE_MAX_BYTES", default.max_bytes)),
    )


def _webhooks(env: Mapping[str, str]) -> tuple[Webhook, ...]:
    try:
        return parse_webhooks(env.get("RUNESTONE_ALERT_WEBHOOKS", ""))
    except ValueError as exc:
        raise ConfigError(f"RUNESTONE_ALERT_WEBHOOKS: {exc}") from None


def _response_store(env: Mapping[str, str]) -> Bounds:
    default = Bounds()
    days = _number(env, "RUNESTONE_RESPONSE_STORE_DAYS", default.max_age / 86400)
    return Bounds(
        max_responses=int(
            _number(env, "RUNESTONE_RESPONSE_STORE_MAX_RESPONSES", default.max_responses)
        ),
        max_bytes=int(_number(env, "RUNESTONE_RESPONSE_STORE_MAX_BYTES", default.max_bytes)),
        max_age=days * 86400,
    )


def _edge(env: Mapping[str, str]) -> EdgeLimits:
    default = EdgeLimits()
    return EdgeLimits(
        max_header_bytes=int(_number(env, "RUNESTONE_MAX_HEADER_BYTES", default.max_header_bytes)),
        max_headers=int(_number(env, "RUNESTONE_MAX_HEADERS", default.max_headers)),
        header_timeout=_number(env, "RUNESTONE_HEADER_TIMEOUT", default.header_timeout),
        body_timeout=_number(env, "RUNESTONE_BODY_TIMEOUT", default.body_timeout),
        idle_timeout=_number(env, "RUNESTONE_IDLE_TIMEOUT", default.idle_timeout),
        max_connections=int(
            _number(env, "RUNESTONE_MAX_CONNECTIONS", default.max_connections, zero=True)
        ),
    )


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default)
    if value > 1:
        raise ConfigError(f"{name} must be a share from 0 to 1, not {env.get(name)!r}")
    return value


def _transport(env: Mapping[str, str]) -> WireKind:
    value = env.get("RUNESTONE_UPSTREAM_TRANSPORT") or "aiohttp"
    for kind in WIRE_KINDS:
        if value == kind:
            return kind
    raise ConfigError(
        f"RUNESTONE_UPSTREAM_TRANSPORT must be one of {', '.join(WIRE_KINDS)}, not {value!r}"
    )


def _log_format(env: Mapping[str, str]) -> str:
    value = env.get("RUNESTONE_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    if value not in ("json", "text"):
        raise ConfigError(f"RUNESTONE_LOG_FORMAT must be json or text, not {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _number(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value < 0 or (value == 0 and not zero) or value != value:
        raise ConfigError(f"{name} must be {'0 or more' if zero else 'positive'}, not {raw!r}")
    return value
