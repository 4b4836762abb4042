"""The registration seam: providers and adapters are added by ``register`` calls.

Built-ins register themselves in ``builtin`` exactly as a plugin would, so third-party
providers (and translators for a pair of wire formats) need no edit of the router.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from runestone.providers._specs import ProviderRegistry, ProviderSpec
from runestone.providers.adapter import AdapterFactory, Operation

_PROVIDERS: dict[str, Callable[[], ProviderSpec]] = {}
_ADAPTERS: dict[tuple[Operation, str], AdapterFactory] = {}


def register(name: str, factory: Callable[[], ProviderSpec]) -> None:
    """Make a provider available by name. Built-ins use this too.

    >>> register("acme", lambda: ProviderSpec("acme", "openai", "https://api.acme.test/v1",
    ...                                       api_key_env="ACME_API_KEY"))
    """
    _PROVIDERS[name] = factory


def register_adapter(operation: Operation, wire_format: str, factory: AdapterFactory) -> None:
    """Say how ``operation`` requests reach providers of ``wire_format``.

    A later registration for the same pair replaces the earlier one, so a translator of
    one's own can take over a pair from the built-in.

    >>> register_adapter("chat", "acme", lambda context: AcmeAdapter(context.wire))
    """
    _ADAPTERS[(operation, wire_format)] = factory


def registered_specs() -> list[ProviderSpec]:
    return [factory() for factory in _PROVIDERS.values()]


def registered_adapters() -> dict[tuple[Operation, str], AdapterFactory]:
    return dict(_ADAPTERS)


def known_provider_names() -> frozenset[str]:
    """Every provider a target may name, besides those declared in the alias file."""
    return frozenset(spec.name for spec in registered_specs())


def default_registry(environ: Mapping[str, str] | None = None) -> ProviderRegistry:
    return ProviderRegistry(registered_specs(), os.environ if environ is None else environ)
