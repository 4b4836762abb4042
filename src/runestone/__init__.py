"""Runestone: an LLM gateway.

As a library, the same two calls the server makes::

    import runestone

    answer = await runestone.route_chat(
        {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
    )
    async for chunk in runestone.route_stream({"model": "fast", "messages": [...]}):
        ...  # decoded chunks; a failure mid-stream raises GatewayError

``key=`` (a client key of the alias file) applies that key's models, limits and
budgets, and books its spend, as the server does.

With ``RUNESTONE_GATEWAY_MODE=true`` and ``RUNESTONE_URL`` they go to a central
Runestone server instead. As a server: ``runestone serve``, or mount
``runestone.http.create_app()`` in an ASGI application.
"""

from runestone._api import route_chat, route_stream
from runestone._library import aclose
from runestone._version import __version__
from runestone.aliases import Alias, AliasStore, AliasTable, Target
from runestone.errors import ClientError, GatewayError, GatewayFault, UpstreamError

__all__ = [
    "Alias",
    "AliasStore",
    "AliasTable",
    "ClientError",
    "GatewayError",
    "GatewayFault",
    "Target",
    "UpstreamError",
    "__version__",
    "aclose",
    "route_chat",
    "route_stream",
]
