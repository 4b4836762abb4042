"""The alias file's side sections (providers, prices) and the checks every section shares."""

from __future__ import annotations

import re
from collections.abc import Mapping

from runestone.aliases._schema import Problem, SpecError, Target, parse_spec
from runestone.aliases._yaml_nodes import Located
from runestone.pricing import Price, price_from
from runestone.providers import ProviderSpec, credentials_in

PROVIDER_KEYS = frozenset(
    {"base_url", "api_key_env", "headers", "prefill", "responses", "stream_usage"}
)
_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def parse_prices(section: Located, problems: list[Problem]) -> dict[str, Price]:
    """provider:model -> {input, output, cached_input, cache_write} in USD per million
    tokens."""
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'prices' must map provider:model to prices"))
        return {}
    found: dict[str, Price] = {}
    for spec, entry in section.value.items():
        try:
            target = parse_spec(spec)
        except SpecError as exc:
            problems.append(Problem(entry.line, f"prices: {exc}"))
            continue
        value = entry.value
        plain = {k: v.value for k, v in value.items()} if isinstance(value, dict) else None
        price = price_from(plain) if plain is not None else None
        unknown = set(plain or {}) - {"input", "output", "cached_input", "cache_write"}
        if price is None or unknown:
            problems.append(
                Problem(
                    entry.line,
                    f"prices: {spec!r} needs input and output (and optionally cached_input "
                    "and cache_write), numbers of USD per million tokens, and nothing else",
                )
            )
            continue
        found[str(target)] = price
    return found


def required_string(
    value: dict[str, Located], key: str, line: int, where: str, problems: list[Problem]
) -> str | None:
    entry = value.get(key)
    if entry is None:
        problems.append(Problem(line, f"{where}: missing '{key}'"))
        return None
    if not isinstance(entry.value, str) or not entry.value.strip():
        problems.append(Problem(entry.line, f"{where}: '{key}' must be a non-empty string"))
        return None
    return entry.value.strip()


def spec_target(spec: str, line: int, where: str, problems: list[Problem]) -> Target | None:
    try:
        return parse_spec(spec)
    except SpecError as exc:
        problems.append(Problem(line, f"{where}: {exc}"))
        return None


def unknown_keys(
    value: dict[str, Located], allowed: frozenset[str], where: str, problems: list[Problem]
) -> None:
    for key, entry in value.items():
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            problems.append(
                Problem(entry.line, f"{where}: unknown key {key!r} (expected: {expected})")
            )


def kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_providers(section: Located, problems: list[Problem]) -> list[ProviderSpec]:
    """Users' own OpenAI-compatible providers: name, base_url, api_key_env, headers."""
    if section.value is None:
        return []
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'providers' must be a mapping of name: settings"))
        return []
    specs: list[ProviderSpec] = []
    for name, entry in section.value.items():
        where = f"provider {name!r}"
        if not _PROVIDER_NAME.match(name):
            problems.append(
                Problem(entry.line, f"{where}: names are lowercase letters, digits, - and _")
            )
            continue
        if not isinstance(entry.value, dict):
            problems.append(Problem(entry.line, f"{where}: expected a map with base_url"))
            continue
        before = len(problems)
        unknown_keys(entry.value, PROVIDER_KEYS, where, problems)
        base_url = required_string(entry.value, "base_url", entry.line, where, problems)
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            problems.append(
                Problem(
                    entry.value["base_url"].line, f"{where}: base_url must start with http(s)://"
                )
            )
        key_env: str | None = None
        if "api_key_env" in entry.value:
            key_env = required_string(entry.value, "api_key_env", entry.line, where, problems)
            if base_url is not None and credentials_in(base_url):
                problems.append(
                    Problem(
                        entry.value["base_url"].line,
                        f"{where}: base_url has credentials in it and api_key_env names a key: "
                        "keep one (credentials in the URL are sent as basic auth)",
                    )
                )
        headers: list[tuple[str, str]] = []
        if "headers" in entry.value:
            raw = entry.value["headers"]
            if not isinstance(raw.value, dict) or not all(
                isinstance(v.value, str) for v in raw.value.values()
            ):
                problems.append(Problem(raw.line, f"{where}: headers must map names to strings"))
            else:
                headers = [(k.lower(), str(v.value)) for k, v in raw.value.items()]
        prefill = _flag(entry.value, "prefill", False, where, problems)
        # Asked of every server unless it says it refuses the option.
        stream_usage = _flag(entry.value, "stream_usage", True, where, problems)
        responses = False
        if "responses" in entry.value:
            raw_responses = entry.value["responses"]
            if raw_responses.value in ("native", "bridge"):
                responses = raw_responses.value == "native"
            else:
                problems.append(
                    Problem(raw_responses.line, f"{where}: responses must be native or bridge")
                )
        if len(problems) > before or base_url is None:
            continue
        specs.append(
            ProviderSpec(
                name=name,
                wire_format="openai",
                base_url=base_url.rstrip("/"),
                api_key_env=key_env,
                key_required=key_env is not None,
                headers=tuple(headers),
                docs=f"declared in the alias file, line {entry.line}",
                prefill=prefill,
                responses=responses,
                stream_usage=stream_usage,
            )
        )
    return specs


def _flag(
    settings: Mapping[str, Located], name: str, default: bool, where: str, problems: list[Problem]
) -> bool:
    """A true-or-false setting, ``default`` when absent."""
    entry = settings.get(name)
    if entry is None:
        return default
    if not isinstance(entry.value, bool):
        problems.append(Problem(entry.line, f"{where}: {name} must be true or false"))
        return default
    return entry.value
