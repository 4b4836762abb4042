"""The alias file's schema and validation, from literal YAML."""

from __future__ import annotations

import pytest

from runestone.aliases import (
    DEFAULT_ALIASES_PATH,
    AliasFileError,
    SpecError,
    Target,
    load_alias_file,
    parse_alias_file,
    parse_spec,
)


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_alias_file(text.encode(), "aliases.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(AliasFileError) as caught:
        parse(text)
    return [p.format("aliases.yaml") for p in caught.value.problems]


def test_string_form() -> None:
    table = parse("aliases:\n  fast: groq:llama3-8b-8192\n")
    assert table.get("fast").targets == (Target("groq", "llama3-8b-8192"),)  # type: ignore[union-attr]


def test_map_form() -> None:
    table = parse("aliases:\n  smart: {provider: openai, model: gpt-4}\n")
    assert table.get("smart").targets == (Target("openai", "gpt-4"),)  # type: ignore[union-attr]


def test_list_form_keeps_order_and_mixes_target_shapes() -> None:
    table = parse(
        """
aliases:
  resilient:
    targets:
      - openai:gpt-4o
      - {provider: anthropic, model: claude-3-5-sonnet-latest}
      - {target: "openrouter:meta-llama/llama-3:free"}
"""
    )
    alias = table.get("resilient")
    assert alias is not None
    assert [str(t) for t in alias.targets] == [
        "openai:gpt-4o",
        "anthropic:claude-3-5-sonnet-latest",
        "openrouter:meta-llama/llama-3:free",
    ]
    assert alias.line == 3


@pytest.mark.parametrize(
    ("spec", "provider", "model"),
    [
        ("openai:gpt-4", "openai", "gpt-4"),
        ("openrouter:anthropic/claude-3-haiku", "openrouter", "anthropic/claude-3-haiku"),
        ("ollama:llama3.1:8b", "ollama", "llama3.1:8b"),
        ("openrouter:meta-llama/llama-3:free", "openrouter", "meta-llama/llama-3:free"),
        ("OpenAI:gpt-4", "openai", "gpt-4"),
    ],
)
def test_spec_splits_on_first_colon(spec: str, provider: str, model: str) -> None:
    assert parse_spec(spec) == Target(provider, model)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt-4", "not of the form provider:model"),
        (":gpt-4", "empty provider part"),
        ("openai:", "empty model part"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_yaml_in_spec_with_colons_needs_no_quotes() -> None:
    table = parse("aliases:\n  local: ollama:llama3.1:8b\n")
    assert str(table.get("local").targets[0]) == "ollama:llama3.1:8b"  # type: ignore[union-attr]


def test_entry_neither_string_nor_map() -> None:
    assert problems("aliases:\n  ok: a:b\n  weird: 42\n") == [
        "aliases.yaml:3: alias 'weird': expected 'provider:model' or a map with provider and "
        "model, got int 42"
    ]


def test_null_entry() -> None:
    assert problems("aliases:\n  empty:\n") == [
        "aliases.yaml:2: alias 'empty': expected 'provider:model' or a map with provider and "
        "model, got nothing"
    ]


def test_map_without_model() -> None:
    assert problems("aliases:\n\n  smart: {provider: openai}\n") == [
        "aliases.yaml:3: alias 'smart': missing 'model'"
    ]


def test_map_without_provider() -> None:
    assert problems("aliases:\n  smart:\n    model: gpt-4\n") == [
        "aliases.yaml:2: alias 'smart': missing 'provider'"
    ]


def test_empty_name() -> None:
    assert problems('aliases:\n  "": openai:gpt-4\n') == ["aliases.yaml:2: alias name is empty"]


def test_duplicate_key_names_alias_and_both_lines() -> None:
    assert problems("aliases:\n  fast: a:b\n  other: c:d\n  fast: e:f\n") == [
        "aliases.yaml:4: duplicate key 'fast' (first defined on line 2)"
    ]


def test_unknown_top_level_key() -> None:
    assert problems("aliases:\n  a: b:c\nalias:\n  d: e:f\n") == [
        "aliases.yaml:3: unknown top-level key 'alias' "
        "(expected: access, aliases, allow_shrink, defaults, guards, keys, prices, providers, "
        "teams)"
    ]


def test_unknown_key_in_alias_map() -> None:
    (found,) = problems("aliases:\n  a: {provider: x, model: y, modle: z}\n")
    assert found.startswith("aliases.yaml:2: alias 'a': unknown key 'modle' (expected: ")
    assert "model, on_stream_cut, prompt_cache, provider, retries, strategy, targets" in found


def test_empty_provider_part() -> None:
    assert problems("aliases:\n  a: ':gpt-4'\n") == [
        "aliases.yaml:2: alias 'a': ':gpt-4' has an empty provider part (expected provider:model)"
    ]


def test_empty_provider_part_in_a_target_list() -> None:
    assert problems("aliases:\n  a:\n    targets:\n      - x:y\n      - ':z'\n") == [
        "aliases.yaml:5: alias 'a' target 2: ':z' has an empty provider part "
        "(expected provider:model)"
    ]


def test_empty_provider_in_map_form() -> None:
    assert problems("aliases:\n  a: {provider: '', model: m}\n") == [
        "aliases.yaml:2: alias 'a': 'provider' must be a non-empty string"
    ]


def test_spec_without_colon() -> None:
    assert problems("aliases:\n  a: gpt-4\n") == [
        "aliases.yaml:2: alias 'a': 'gpt-4' is not of the form provider:model"
    ]


def test_targets_and_provider_together() -> None:
    assert problems("aliases:\n  a: {provider: x, model: y, targets: [p:q]}\n") == [
        "aliases.yaml:2: alias 'a': give either 'targets' or 'provider'/'model', not both"
    ]


def test_empty_target_list() -> None:
    assert problems("aliases:\n  a: {targets: []}\n") == [
        "aliases.yaml:2: alias 'a': 'targets' must be a non-empty list"
    ]


def test_yaml_syntax_error_has_line() -> None:
    (message,) = problems("aliases:\n  a: b:c\n  bad: [unclosed\n  d: e:f\n")
    assert message.startswith("aliases.yaml:")
    assert "YAML syntax error" in message
    line = int(message.split(":")[1])
    assert 3 <= line <= 5


def test_every_problem_is_reported_in_line_order() -> None:
    found = problems("aliases:\n  a: 1\n  b: x\n  '': c:d\nextra: 1\n")
    assert [int(p.split(":")[1]) for p in found] == [2, 3, 4, 5]


def test_non_string_alias_name() -> None:
    assert problems("aliases:\n  123: a:b\n") == [
        "aliases.yaml:2: key 123 must be a string (quote it)"
    ]


def test_empty_file_is_an_error() -> None:
    assert problems("") == ["aliases.yaml: file is empty (expected a top-level 'aliases:' mapping)"]


def test_empty_aliases_section_is_valid() -> None:
    assert len(parse("aliases: {}\n")) == 0


def test_anchor_and_merge_inside_aliases() -> None:
    table = parse(
        """
aliases:
  a: &base {provider: openai, model: gpt-4}
  b: {<<: *base, model: gpt-4o}
"""
    )
    assert str(table.get("b").targets[0]) == "openai:gpt-4o"  # type: ignore[union-attr]


def test_version_is_a_content_hash() -> None:
    one = parse("aliases:\n  a: b:c\n")
    two = parse("aliases:\n  a: b:c\n")
    three = parse("aliases:\n  a: b:d\n")
    assert one.version == two.version != three.version


def test_table_is_immutable() -> None:
    table = parse("aliases:\n  a: b:c\n")
    with pytest.raises(TypeError):
        table.aliases["x"] = table.aliases["a"]  # type: ignore[index]


def test_lookups_are_case_sensitive() -> None:
    table = parse("aliases:\n  fast: a:b\n  Fast: c:d\n")
    assert str(table.get("fast").targets[0]) == "a:b"  # type: ignore[union-attr]
    assert str(table.get("Fast").targets[0]) == "c:d"  # type: ignore[union-attr]
    assert table.get("FAST") is None


def test_packaged_default_file() -> None:
    table = load_alias_file(DEFAULT_ALIASES_PATH)
    resolved = {name: [str(t) for t in a.targets] for name, a in table.aliases.items()}
    assert resolved["fast"] == ["groq:llama3-8b-8192"]
    assert resolved["smart"] == ["openai:gpt-4"]
    assert resolved["cheap"] == ["anthropic:claude-3-haiku-20240307"]
    for name in ("balanced", "powerful"):
        assert name in resolved
    assert resolved["local"][0].startswith("ollama:")
    assert any(t.startswith("openrouter:") for ts in resolved.values() for t in ts)


def test_unknown_provider_is_a_problem_when_providers_are_known() -> None:
    text = b"aliases:\n  a: opnai:gpt-4\n  b: mine:x\nproviders:\n  mine: {base_url: 'http://127.0.0.1:1/v1'}\n"
    with pytest.raises(AliasFileError) as caught:
        parse_alias_file(text, "f.yaml", known_providers={"openai", "groq"})
    (problem,) = caught.value.problems
    assert problem.format("f.yaml") == (
        "f.yaml:2: alias 'a': unknown provider 'opnai' (known: groq, mine, openai)"
    )


def test_providers_section() -> None:
    table = parse(
        """
aliases:
  a: local-llm:qwen2.5:7b
providers:
  local-llm:
    base_url: http://127.0.0.1:8080/v1/
    api_key_env: LOCAL_KEY
    headers: {X-Title: my app}
  keyless: {base_url: 'http://127.0.0.1:9000/v1'}
"""
    )
    local, keyless = table.providers
    assert (local.name, local.base_url, local.api_key_env) == (
        "local-llm",
        "http://127.0.0.1:8080/v1",
        "LOCAL_KEY",
    )
    assert local.headers == (("x-title", "my app"),)
    assert local.key_required
    assert not keyless.key_required
    assert keyless.wire_format == "openai"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  Bad Name: {base_url: 'http://x'}", "names are lowercase letters"),
        ("  p: {api_key_env: K}", "provider 'p': missing 'base_url'"),
        ("  p: {base_url: 'ftp://x'}", "base_url must start with http(s)://"),
        ("  p: {base_url: 'http://x', colour: red}", "unknown key 'colour'"),
        ("  p: {base_url: 'http://x', headers: [a]}", "headers must map names to strings"),
        ("  p: http://x", "expected a map with base_url"),
    ],
)
def test_bad_provider_entries(section: str, message: str) -> None:
    (found,) = problems(f"aliases: {{}}\nproviders:\n{section}\n")
    assert found.startswith("aliases.yaml:3: ")
    assert message in found
