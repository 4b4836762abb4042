"""The HTTP face of the gateway: an ASGI application.

Serve it with ``runestone serve``, or mount it in a FastAPI or Starlette application::

    from fastapi import FastAPI
    from runestone.http import create_app

    api = FastAPI()
    api.mount("/llm", create_app())   # clients use base_url="http://host/llm/v1"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from runestone.aliases import AliasStore
from runestone.config import Settings
from runestone.http._app import RunestoneApp
from runestone.http.middleware.auth import Principal
from runestone.http.routing import Mount
from runestone.providers import known_provider_names

__all__ = ["Mount", "Principal", "RunestoneApp", "create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    aliases_path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    mounts: Sequence[Mount] = (),
) -> RunestoneApp:
    """Build the gateway's ASGI app from ``settings`` (default: the environment).

    ``mounts`` add sub-applications below a path prefix; they see the caller's
    ``Principal`` in ``scope["auth"]``::

        create_app(mounts=[Mount("/tools", tools_app)])
    """
    settings = Settings.from_env(environ) if settings is None else settings
    known = known_provider_names()
    store = (
        AliasStore(aliases_path, known, max_drop=settings.max_alias_drop)
        if aliases_path is not None
        else settings.alias_store(known)
    )
    return RunestoneApp(settings, store, environ, mounts=tuple(mounts))
