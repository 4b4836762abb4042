"""Anthropic-format requests to Anthropic: a byte pass-through of the Messages API.

Only ``model`` is rewritten; the client's ``anthropic-version`` and ``anthropic-beta``
headers and its query string (``?beta=true``) are forwarded (the provider row supplies a
default version).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from runestone.providers.adapter import Call
from runestone.providers.openai_compat import SessionAdapter

_PATHS = {"messages": "/v1/messages", "count_tokens": "/v1/messages/count_tokens"}


class AnthropicMessagesAdapter(SessionAdapter):
    def _prepare(self, call: Call) -> tuple[str, bytes, Mapping[str, str]]:
        return _PATHS[call.operation], orjson.dumps(call.target_body()), call.endpoint.headers
