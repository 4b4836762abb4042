"""The built-in providers, as rows; README.md has them as a table.

Each ``<PROVIDER>_BASE_URL`` keeps the meaning its provider's own SDK gives it:
``OPENAI_BASE_URL`` ends in ``/v1``; ``GROQ_BASE_URL``, ``MISTRAL_BASE_URL``,
``OLLAMA_BASE_URL`` and ``ANTHROPIC_BASE_URL`` are bare origins; for providers without
an SDK it is their OpenAI-compatible base.
"""

from __future__ import annotations

from collections.abc import Callable

from runestone.providers._registry import register, register_adapter, registered_adapters
from runestone.providers._specs import ProviderSpec
from runestone.providers.adapter import Adapter, AdapterContext, AdapterFactory
from runestone.providers.anthropic_native import AnthropicMessagesAdapter
from runestone.providers.anyllm import (
    AnyLLMChatAdapter,
    AnyLLMClients,
    AnyLLMEmbeddingsAdapter,
    AnyLLMMessagesAdapter,
)
from runestone.providers.mock import MockAdapter, MockEmbeddingsAdapter
from runestone.providers.mock_messages import MockMessagesAdapter
from runestone.providers.openai_compat import OpenAICompatibleAdapter
from runestone.providers.responses import ResponsesAdapter
from runestone.providers.translated import ChatToAnthropicAdapter, MessagesToOpenAIAdapter


def _openai_compatible(
    name: str,
    base_url: str,
    *,
    origin_path: str = "",
    key_required: bool = True,
    headers: tuple[tuple[str, str], ...] = (),
    stream_usage: bool = True,
    needs_base_url: bool = False,
    responses: bool = False,
) -> ProviderSpec:
    env = name.upper()
    return ProviderSpec(
        name=name,
        wire_format="openai",
        base_url=base_url,
        api_key_env=f"{env}_API_KEY",
        key_required=key_required,
        base_url_env=f"{env}_BASE_URL",
        origin_path=origin_path,
        headers=headers,
        stream_usage=stream_usage,
        needs_base_url=needs_base_url,
        responses=responses,
    )


BUILTIN: tuple[ProviderSpec, ...] = (
    _openai_compatible("openai", "https://api.openai.com/v1", responses=True),
    _openai_compatible(
        "groq", "https://api.groq.com/openai/v1", origin_path="/openai/v1", responses=True
    ),
    _openai_compatible("openrouter", "https://openrouter.ai/api/v1", responses=True),
    _openai_compatible("together", "https://api.together.xyz/v1"),
    _openai_compatible(
        "mistral", "https://api.mistral.ai/v1", origin_path="/v1", stream_usage=False
    ),
    _openai_compatible("deepseek", "https://api.deepseek.com/v1"),
    _openai_compatible("fireworks", "https://api.fireworks.ai/inference/v1"),
    _openai_compatible("xai", "https://api.x.ai/v1", responses=True),
    _openai_compatible(
        "ollama",
        "http://127.0.0.1:11434/v1",
        origin_path="/v1",
        key_required=False,
        stream_usage=False,
        needs_base_url=True,
    ),
    _openai_compatible("vllm", "http://127.0.0.1:8000/v1", key_required=False, needs_base_url=True),
    ProviderSpec(
        name="anthropic",
        wire_format="anthropic",
        base_url="https://api.anthropic.com",
        api_key_env="ANTHROPIC_API_KEY",
        auth_style="x-api-key",
        base_url_env="ANTHROPIC_BASE_URL",
        headers=(("anthropic-version", "2023-06-01"),),
        prefill=True,
        stream_usage=True,  # translated streams always carry Anthropic's usage
    ),
    ProviderSpec(
        name="mock", wire_format="mock", base_url="", key_required=False, stream_usage=True
    ),
)

#: Reached through any-llm, which reads their keys and settings from the variables its
#: own SDKs use (GEMINI_API_KEY, COHERE_API_KEY, AWS_*, ...); each needs its extra
#: installed: pip install 'any-llm-sdk[gemini]'.
ANYLLM_ONLY = (
    "gemini",
    "vertexai",
    "cohere",
    "bedrock",
    "azure",
    "watsonx",
    "huggingface",
    "cerebras",
    "sambanova",
    "perplexity",
    "nebius",
    "voyage",
    "sagemaker",
)
BUILTIN += tuple(
    ProviderSpec(
        name=name, wire_format="anyllm", base_url="", key_required=False, stream_usage=True
    )
    for name in ANYLLM_ONLY
)


def _constant(spec: ProviderSpec) -> Callable[[], ProviderSpec]:
    return lambda: spec


for _spec in BUILTIN:
    register(_spec.name, _constant(_spec))


# How each operation reaches each wire format. Same format: bytes pass through (one
# adapter instance per gateway, shared by its operations); otherwise any-llm translates.
def _passthrough(context: AdapterContext) -> Adapter:
    return context.shared(
        "openai-passthrough",
        lambda: OpenAICompatibleAdapter(context.wire, max_body=context.max_upstream_body),
    )


def _anthropic(context: AdapterContext) -> Adapter:
    return context.shared(
        "anthropic-passthrough",
        lambda: AnthropicMessagesAdapter(context.wire, max_body=context.max_upstream_body),
    )


def _translated_chat(context: AdapterContext) -> Adapter:
    return AnyLLMChatAdapter(context.shared("anyllm", AnyLLMClients))


def _chat_to_anthropic(context: AdapterContext) -> Adapter:
    return context.shared(
        "chat-to-anthropic",
        lambda: ChatToAnthropicAdapter(
            context.wire,
            max_body=context.max_upstream_body,
            max_event=context.max_event_bytes,
        ),
    )


def _translated_messages(context: AdapterContext) -> Adapter:
    return AnyLLMMessagesAdapter(context.shared("anyllm", AnyLLMClients))


def _messages_to_openai(context: AdapterContext) -> Adapter:
    return context.shared(
        "messages-to-openai",
        lambda: MessagesToOpenAIAdapter(
            context.wire,
            max_body=context.max_upstream_body,
            max_event=context.max_event_bytes,
        ),
    )


def _translated_embeddings(context: AdapterContext) -> Adapter:
    return AnyLLMEmbeddingsAdapter(context.shared("anyllm", AnyLLMClients))


register_adapter("chat", "openai", _passthrough)
register_adapter("chat", "mock", lambda context: MockAdapter())
register_adapter("chat", "anthropic", _chat_to_anthropic)
register_adapter("chat", "anyllm", _translated_chat)
register_adapter("messages", "anthropic", _anthropic)
register_adapter("messages", "openai", _messages_to_openai)
register_adapter("messages", "anyllm", _translated_messages)
register_adapter("count_tokens", "anthropic", _anthropic)
register_adapter("embeddings", "openai", _passthrough)
register_adapter("embeddings", "anyllm", _translated_embeddings)
register_adapter("messages", "mock", lambda context: MockMessagesAdapter())


def _responses(wire_format: str) -> AdapterFactory:
    """Responses requests to ``wire_format``: through its chat adapter, or passed through."""

    def factory(context: AdapterContext) -> Adapter:
        chat = registered_adapters()[("chat", wire_format)](context)
        native = _passthrough(context) if wire_format == "openai" else None
        return ResponsesAdapter(chat, native, max_event=context.max_event_bytes)

    return factory


for _wire_format in ("openai", "anthropic", "anyllm", "mock"):
    register_adapter("responses", _wire_format, _responses(_wire_format))
register_adapter("count_tokens", "mock", lambda context: MockMessagesAdapter())
register_adapter("embeddings", "mock", lambda context: MockEmbeddingsAdapter())
