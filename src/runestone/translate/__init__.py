"""Pure mappers between wire formats: decoded JSON in, decoded JSON out, no I/O.

``messages_request``: an Anthropic Messages request, as the arguments of the translating
adapter (any-llm's ``amessages``), with the rule for fields the target cannot honour.
"""

from runestone.translate.messages_request import messages_arguments

__all__ = ["messages_arguments"]
