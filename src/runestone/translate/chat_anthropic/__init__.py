"""The pair chat completions and Anthropic Messages, both ways.

- ``chat_to_messages``: a chat-completions client on an Anthropic target (the request,
  the answer back, the stream's events back as chunks);
- ``messages_to_chat`` and ``messages_events``: an Anthropic Messages client on a
  chat-completions target (the request, the answer back, the chunks back as events);
- ``messages_request``: the rule for every field of a Messages request bound for
  another format (any-llm's adapters follow it too).
"""
