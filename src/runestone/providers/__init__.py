"""Providers: who can be called, where, with which key and in which wire format.

A provider is a ``ProviderSpec`` row (data, not code); OpenAI-compatible services differ
only in their rows. Behaviour lives in one adapter per (operation, wire format), chosen
by the spec's ``wire_format``. Built-ins are registered the same way a plugin would
register its own (``register``, ``register_adapter``); providers declared in the alias
file join per table snapshot.

Modules: ``_specs`` (rows and endpoints), ``_registry`` (the registration seam),
``adapter`` (the adapter interface), ``errors`` (provider failures mapped by table),
``wire`` (the upstream HTTP transport: ``wire_aiohttp`` over ``_session``'s pool, or
``wire_reqwest``), one module per adapter, ``builtin`` (the rows).
"""

# Last: the built-in rows and adapters register through the seam above.
from runestone.providers import builtin
from runestone.providers._registry import (
    default_registry,
    known_provider_names,
    register,
    register_adapter,
    registered_adapters,
    registered_specs,
)
from runestone.providers._specs import (
    AuthStyle,
    Endpoint,
    ProviderRegistry,
    ProviderSpec,
    WireFormat,
    credentials_in,
    resolve_endpoint,
)
from runestone.providers.adapter import (
    Adapter,
    AdapterContext,
    AdapterFactory,
    Call,
    Forwarded,
    Operation,
    Reply,
    UpstreamStream,
)

__all__ = [
    "Adapter",
    "AdapterContext",
    "AdapterFactory",
    "AuthStyle",
    "Call",
    "Endpoint",
    "Forwarded",
    "Operation",
    "ProviderRegistry",
    "ProviderSpec",
    "Reply",
    "UpstreamStream",
    "WireFormat",
    "builtin",
    "credentials_in",
    "default_registry",
    "known_provider_names",
    "register",
    "register_adapter",
    "registered_adapters",
    "registered_specs",
    "resolve_endpoint",
]
