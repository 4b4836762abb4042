"""Pure mappers between wire formats: decoded JSON in, decoded JSON out, no I/O.

Grouped by the pair of formats they join, as their adapters are named by what they join:

- ``chat_anthropic``: chat completions and Anthropic Messages, both ways;
- ``responses_chat``: a Responses client on a chat-completions target;
- ``_checks``: what a translator checks of an upstream's output before relaying it.
"""

from runestone.translate.chat_anthropic.messages_request import messages_arguments

__all__ = ["messages_arguments"]
