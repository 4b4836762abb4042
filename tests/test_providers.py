"""Provider rows resolved against the environment: URLs, keys and headers."""

from __future__ import annotations

import pytest

from runestone.providers import ProviderSpec, default_registry, register, registered_specs


def endpoint(name: str, **env: str):  # type: ignore[no-untyped-def]
    found = default_registry(env).endpoint(name)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("provider", "env", "base"),
    [
        ("openai", {}, "https://api.openai.com/v1"),
        ("openai", {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1/"}, "http://127.0.0.1:8080/v1"),
        ("groq", {}, "https://api.groq.com/openai/v1"),
        ("groq", {"GROQ_BASE_URL": "https://groq.example"}, "https://groq.example/openai/v1"),
        ("groq", {"GROQ_BASE_URL": "https://g.example/openai/v1"}, "https://g.example/openai/v1"),
        ("openrouter", {}, "https://openrouter.ai/api/v1"),
        ("openrouter", {"OPENROUTER_BASE_URL": "http://h/api/v1"}, "http://h/api/v1"),
        ("ollama", {}, "http://127.0.0.1:11434/v1"),
        ("ollama", {"OLLAMA_BASE_URL": "http://gpu-box:11434"}, "http://gpu-box:11434/v1"),
        ("mistral", {"MISTRAL_BASE_URL": "https://api.mistral.ai"}, "https://api.mistral.ai/v1"),
        ("anthropic", {}, "https://api.anthropic.com"),
        ("anthropic", {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9/"}, "http://127.0.0.1:9"),
    ],
)
def test_base_urls_keep_their_sdk_meaning(provider: str, env: dict[str, str], base: str) -> None:
    assert endpoint(provider, **env).base_url == base


def test_keys_and_auth_headers() -> None:
    openai = endpoint("openai", OPENAI_API_KEY="sk-1")
    assert openai.headers["authorization"] == "Bearer sk-1"
    assert openai.configured
    anthropic = endpoint("anthropic", ANTHROPIC_API_KEY="sk-ant")
    assert anthropic.headers["x-api-key"] == "sk-ant"
    assert "authorization" not in anthropic.headers
    assert anthropic.headers["anthropic-version"] == "2023-06-01"


def test_missing_key_means_not_configured_and_local_servers_need_their_url() -> None:
    assert not endpoint("groq").configured
    assert not endpoint("groq", GROQ_API_KEY="").configured
    # A server of one's own is used only once its address is set (the robustness issue,
    # item 12): never the default local address by surprise.
    assert not endpoint("ollama").configured
    assert not endpoint("vllm").configured
    assert endpoint("ollama", OLLAMA_BASE_URL="http://gpu-box:11434").configured
    assert endpoint("vllm", VLLM_BASE_URL="http://127.0.0.1:8000/v1").configured
    assert "authorization" not in endpoint("ollama").headers


def test_every_builtin_named_in_the_issue_exists() -> None:
    names = default_registry({}).names()
    for name in (
        "openai",
        "groq",
        "openrouter",
        "together",
        "mistral",
        "deepseek",
        "fireworks",
        "xai",
        "ollama",
        "vllm",
        "anthropic",
        "mock",
    ):
        assert name in names


def test_register_a_third_party_provider() -> None:
    spec = ProviderSpec("acme-test", "openai", "https://acme.test/v1", api_key_env="ACME_KEY")
    register("acme-test", lambda: spec)
    try:
        assert spec in registered_specs()
        assert endpoint("acme-test", ACME_KEY="k").headers["authorization"] == "Bearer k"
    finally:
        from runestone.providers import _registry

        del _registry._PROVIDERS["acme-test"]
