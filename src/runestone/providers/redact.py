"""Credentials never leave the gateway in a provider's words.

Providers quote keys back in their errors ("Incorrect API key provided: sk-proj-..."),
and URLs carry credentials (``http://admin:hunter2@host``). Every upstream message that
reaches a client or a log passes through ``redact``: configured keys, anything shaped
like a key or a bearer token, and URL userinfo are masked, and the length is bounded.
"""

from __future__ import annotations

import re

# What a credential looks like in a provider's words: "Incorrect API key provided:
# sk-proj-...", "Bearer gsk_...". Matched wherever an upstream message reaches a client or
# a log, together with every key the gateway was configured with.
_CREDENTIAL = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"
    r"|\b(?:sk|gsk|xai|pk|rk|key)[-_][A-Za-z0-9._-]{6,}"
    r"|\bAIza[A-Za-z0-9_-]{20,}"
)
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")  # http://user:pass@host -> http://host
_SECRETS: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
MAX_UPSTREAM_MESSAGE = 1000  # characters of a provider's message a client is shown


def remember_secret(value: str) -> None:
    """A configured key: never let it through in an upstream's message."""
    global _secret_pattern
    if len(value) >= 6 and value not in _SECRETS:
        _SECRETS.add(value)
        alternatives = sorted(_SECRETS, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: str) -> str:
    """``text`` with credentials masked and its length bounded."""
    if len(text) > MAX_UPSTREAM_MESSAGE:
        text = text[:MAX_UPSTREAM_MESSAGE] + "..."
    if _secret_pattern is not None:
        text = _secret_pattern.sub("[redacted]", text)
    return _USERINFO.sub("", _CREDENTIAL.sub("[redacted]", text))
