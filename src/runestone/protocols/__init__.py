"""Client wire formats, one module each, in a small registry keyed by operation.

- ``openai_chat``: OpenAI chat completions (``CHAT``);
- ``anthropic_messages``: Anthropic Messages and token counting (``MESSAGES``,
  ``COUNT_TOKENS``);
- ``embeddings``: OpenAI embeddings (``EMBEDDINGS``);
- ``responses``: OpenAI Responses (``RESPONSES``).

A new wire format is one more module and one more ``register_protocol`` call; the
router and the HTTP layer only ever hold a ``ClientProtocol``.
"""

from runestone.protocols._base import ClientProtocol, ScannerFactory
from runestone.protocols.anthropic_messages import COUNT_TOKENS, MESSAGES
from runestone.protocols.embeddings import EMBEDDINGS
from runestone.protocols.openai_chat import CHAT, validate_chat
from runestone.protocols.responses import RESPONSES
from runestone.providers.adapter import Operation

_PROTOCOLS: dict[Operation, ClientProtocol] = {}


def register_protocol(protocol: ClientProtocol) -> None:
    _PROTOCOLS[protocol.operation] = protocol


def protocol_for(operation: Operation) -> ClientProtocol:
    return _PROTOCOLS[operation]


for _protocol in (CHAT, MESSAGES, COUNT_TOKENS, EMBEDDINGS, RESPONSES):
    register_protocol(_protocol)

__all__ = [
    "CHAT",
    "COUNT_TOKENS",
    "EMBEDDINGS",
    "MESSAGES",
    "RESPONSES",
    "ClientProtocol",
    "ScannerFactory",
    "protocol_for",
    "register_protocol",
    "validate_chat",
]
