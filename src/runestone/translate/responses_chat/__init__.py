"""The pair Responses and chat completions: a Responses client on a chat-completions
target. ``request``: the Responses request as a chat completion; ``answer``: the
completion (or its chunks) back as a Response (or its events)."""
