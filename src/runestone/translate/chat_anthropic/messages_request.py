"""An Anthropic Messages request, prepared for a target of another wire format.

The rule for every field a client may send (Claude Code sends most of them):

- **translated**: ``model``, ``messages``, ``system``, ``max_tokens``, ``temperature``,
  ``top_p``, ``stop_sequences``, ``stream``, ``tools``, ``tool_choice``,
  ``prompt_cache_key``, ``service_tier``, ``metadata.user_id`` (as OpenAI's
  ``safety_identifier``, which its caches and abuse checks key on), ``thinking`` with
  ``type`` ``enabled`` (a
  reasoning effort from its budget) or ``disabled``, and ``output_config`` (its
  ``effort`` becomes the reasoning effort, its ``format`` a JSON-schema response format);
- **dropped**, because they concern only the client's bookkeeping or Anthropic's own
  context handling and the answer is the same without them: the rest of ``metadata``,
  ``context_management``, ``betas``, ``cache_control`` and ``thinking`` with ``type``
  ``adaptive`` (the model decides how much to think);
- **refused** with a 400 that names the field, because dropping it would change the
  answer: anything else (``top_k``, ``container``, ``mcp_servers``, ...).
"""

from __future__ import annotations

import logging

from runestone.errors import error_for

log = logging.getLogger("runestone.translate")

_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "prompt_cache_key",
        "service_tier",
        "metadata",
    }
)
_DROPPED = frozenset({"context_management", "betas", "cache_control"})
_THINKING = frozenset({"enabled", "disabled", "adaptive"})


def messages_arguments(body: dict[str, object], provider: str) -> dict[str, object]:
    """The keyword arguments for the translating adapter, or ``invalid_request``."""
    arguments: dict[str, object] = {}
    dropped: list[str] = []
    for field, value in body.items():
        if field in _TRANSLATED:
            arguments[field] = value
        elif field in _DROPPED:
            dropped.append(field)
        elif field == "thinking":
            kind = value.get("type") if isinstance(value, dict) else None
            if kind not in _THINKING:
                raise _refused(field, provider, "type must be enabled, disabled or adaptive")
            if kind == "adaptive":
                dropped.append("thinking")
            else:
                arguments["thinking"] = value
        elif field == "output_config":
            if not isinstance(value, dict):
                raise _refused(field, provider, "it must be an object")
            unknown = set(value) - {"effort", "format"}
            if unknown:
                raise _refused(f"output_config.{sorted(unknown)[0]}", provider)
            arguments["output_format"] = value  # any-llm's name for the same object
        else:
            raise _refused(field, provider)
    if dropped:
        log.debug("not sent to %s (no equivalent there): %s", provider, ", ".join(dropped))
    return arguments


def _refused(field: str, provider: str, why: str = "") -> Exception:
    detail = f": {why}" if why else ""
    return error_for(
        "invalid_request",
        f"{field!r} cannot be honoured by {provider}, which does not speak the Anthropic "
        f"Messages API natively{detail}; remove it, or route this model to an Anthropic "
        "target",
        param=field,
    )
