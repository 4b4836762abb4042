"""What ``runestone serve`` checks before it starts: a gateway that cannot do what it is
configured to do refuses to start (exit code 2), with one line per problem naming the
setting and the fix, rather than start, report ready, and fail requests later.

- every ``RUNESTONE_*`` variable is a setting (a typo gets the nearest name);
- the store of limits, spend and stored responses can be used: Redis's package is
  installed and its server answers (``RUNESTONE_START_DEGRADED=true`` starts without
  it: requests that need it are then refused, or let through, as the alias file's
  ``access`` section says), or the state file's directory can be written;
- a provider's base URL with credentials in it is not given a key as well.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from runestone.access import default_state_path
from runestone.config import SETTING_NAMES, Settings
from runestone.providers import credentials_in, registered_specs


def problems(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Why the gateway should not start, one line each; empty when it can."""
    found = _unknown_names(environ)
    found += _store(settings, environ)
    found += _credentials_and_keys(environ)
    return found


def _unknown_names(environ: Mapping[str, str]) -> list[str]:
    found = []
    for name in sorted(environ):
        if name.startswith("RUNESTONE_") and name not in SETTING_NAMES:
            near = difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]}?)" if near else " (see the configuration reference)"
            found.append(f"{name} is not a Runestone setting{hint}: rename or unset it")
    return found


def _store(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    if settings.redis_url:
        try:
            import redis
        except ImportError:
            return [
                "RUNESTONE_REDIS_URL is set but the redis package is not installed: "
                "pip install 'runestone[redis]', or unset RUNESTONE_REDIS_URL"
            ]
        if settings.start_degraded:
            return []
        where = settings.redis_url.rpartition("@")[2].split("?")[0]  # never the password
        try:
            client = redis.Redis.from_url(
                settings.redis_url, socket_timeout=2, socket_connect_timeout=2
            )
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # redis' errors and OSError alike
            return [
                f"RUNESTONE_REDIS_URL: redis at {where} does not answer ({type(exc).__name__}: "
                f"{exc}): start it or fix the URL, or set RUNESTONE_START_DEGRADED=true to "
                "start without it"
            ]
        return []
    state = settings.state_path or default_state_path(environ)
    return _writable(state)


def _writable(state: Path) -> list[str]:
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state.parent, prefix=".runestone-check-"):
            pass
        if state.exists() and not os.access(state, os.W_OK):
            raise PermissionError(f"{state} is read-only")
    except OSError as exc:
        return [
            f"RUNESTONE_STATE_PATH: cannot write the state file {state} ({exc}): point it at "
            "a writable directory (a volume, in a container), or set RUNESTONE_REDIS_URL"
        ]
    return []


def _credentials_and_keys(environ: Mapping[str, str]) -> list[str]:
    found = []
    for spec in registered_specs():
        url = environ.get(spec.base_url_env) if spec.base_url_env else None
        key = environ.get(spec.api_key_env) if spec.api_key_env else None
        if url and key and credentials_in(url):
            found.append(
                f"{spec.base_url_env} has credentials in it and {spec.api_key_env} is set: "
                "keep one (credentials in the URL are sent as basic auth)"
            )
    return found
