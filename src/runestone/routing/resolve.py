"""Model name -> targets: an exact alias first, else ``provider:model``, else a clear 404."""

from __future__ import annotations

import difflib

from runestone.aliases import AliasTable, SpecError, Target, parse_spec
from runestone.errors import GatewayError, error_for
from runestone.providers import Endpoint, ProviderRegistry

# A bare name that looks like one provider's model: the hint names that provider.
_FAMILIES = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt-", "openai"),
    ("text-embedding-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gemini"),
    ("mistral-", "mistral"),
    ("codestral", "mistral"),
    ("deepseek-", "deepseek"),
    ("grok-", "xai"),
    ("command-", "cohere"),
)


def resolve(model: str, table: AliasTable) -> tuple[Target, ...]:
    """Targets for a requested name: an alias (exact, then pattern), else ``provider:model``."""
    alias = table.match(model)
    if alias is not None:
        return alias.targets
    if ":" in model:
        try:
            return (parse_spec(model),)
        except SpecError as exc:
            raise error_for("model_not_found", str(exc), param="model") from None
    hint = ""
    close = [a for a in table.aliases if a.lower() == model.lower()] or (
        difflib.get_close_matches(model, list(table.aliases), n=3)
    )
    family = next((p for prefix, p in _FAMILIES if model.lower().startswith(prefix)), None)
    if family is not None:
        close = [f"{family}:{model}", *close]
    if close:
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?"
    raise error_for(
        "model_not_found",
        f"unknown model {model!r}: name an alias of the alias file or "
        f"provider:model, e.g. openai:gpt-4o-mini or mock:echo.{hint}",
        param="model",
    )


def unusable(
    target: Target, endpoint: Endpoint | None, registry: ProviderRegistry
) -> GatewayError | None:
    """Why ``target`` cannot be called at all (unknown provider, no key), or None."""
    if endpoint is None:
        return error_for(
            "model_not_found",
            f"unknown provider {target.provider!r} in {str(target)!r}; "
            f"known providers: {', '.join(registry.names())}",
            param="model",
        )
    if not endpoint.configured and endpoint.spec.needs_base_url and not endpoint.base_url_set:
        return error_for(
            "provider_not_configured",
            f"provider {target.provider!r} is a server of your own and is not configured: "
            f"set {endpoint.spec.base_url_env} (for example {endpoint.spec.base_url}) or "
            "declare it under providers: in the alias file",
            provider=target.provider,
        )
    if not endpoint.configured:
        return error_for(
            "provider_not_configured",
            f"provider {target.provider!r} has no API key: set {endpoint.spec.api_key_env} "
            "in the gateway's environment",
            provider=target.provider,
        )
    return None
