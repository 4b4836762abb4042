"""The alias file's schema: YAML text in, a validated ``AliasTable`` out.

Pure functions, no I/O beyond the text they are given. Every problem in a file is
collected (not just the first) so that ``runestone aliases check`` can list them all,
each with its line.

Accepted shapes::

    aliases:
      fast: groq:llama3-8b-8192                        # string form
      smart: {provider: openai, model: gpt-4}          # map form
      resilient:                                       # list form, in order
        targets:
          - openai:gpt-4o
          - {provider: anthropic, model: claude-3-5-sonnet-latest}
          - {target: groq:llama-3.1-8b-instant}
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from runestone._policy import DEFAULT_POLICY, POLICY_KEYS, Policy, parse_policy, positive_number
from runestone._yaml_nodes import Located, YamlProblem, read_located
from runestone.pricing import Price, price_from
from runestone.providers import ProviderSpec

TOP_LEVEL_KEYS = frozenset({"aliases", "providers", "defaults", "prices"})
ALIAS_MAP_KEYS = frozenset({"provider", "model", "targets"}) | POLICY_KEYS
TARGET_MAP_KEYS = frozenset({"provider", "model", "target", "weight"})
PROVIDER_KEYS = frozenset({"base_url", "api_key_env", "headers"})
_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can go: a provider and the model name it knows."""

    provider: str
    model: str
    weight: float = 1.0

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True, slots=True)
class Alias:
    """A name clients use, standing for one or more targets tried in order."""

    name: str
    targets: tuple[Target, ...]
    line: int = 0
    policy: Policy = DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}: {self.message}" if self.line else f"{source}: {self.message}"


class AliasFileError(ValueError):
    """The alias file is invalid; ``problems`` lists every problem with its line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.format(source) for p in problems))


@dataclass(frozen=True, slots=True)
class AliasTable:
    """An immutable, validated alias table. Replaced whole on reload, never mutated."""

    aliases: Mapping[str, Alias]
    version: str
    source: str
    providers: tuple[ProviderSpec, ...] = ()
    defaults: Policy = DEFAULT_POLICY
    prices: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str) -> Alias | None:
        return self.aliases.get(name)

    def __len__(self) -> int:
        return len(self.aliases)


class SpecError(ValueError):
    """A ``provider:model`` string that cannot name a target."""


def parse_spec(spec: str) -> Target:
    """Split ``provider:model`` on the first colon; the model may hold ``/`` and ``:``.

    >>> parse_spec("openrouter:anthropic/claude-3-haiku:beta")
    Target(provider='openrouter', model='anthropic/claude-3-haiku:beta')
    """
    provider, colon, model = spec.partition(":")
    provider = provider.strip().lower()
    model = model.strip()
    if not colon:
        raise SpecError(f"{spec!r} is not of the form provider:model")
    if not provider:
        raise SpecError(f"{spec!r} has an empty provider part (expected provider:model)")
    if not model:
        raise SpecError(f"{spec!r} has an empty model part (expected provider:model)")
    return Target(provider, model)


def table_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def parse_alias_file(
    data: bytes, source: str, known_providers: Collection[str] | None = None
) -> AliasTable:
    """Validate the whole file and build its table, or raise ``AliasFileError``.

    With ``known_providers``, a target naming any other provider (one not declared in
    the file's own ``providers:`` section either) is a problem too.
    """
    problems: list[Problem] = []
    providers: list[ProviderSpec] = []
    defaults: list[Policy] = [DEFAULT_POLICY]
    prices: dict[str, Price] = {}
    aliases = _parse(data, problems, providers, defaults, prices)
    if known_providers is not None:
        known = {*known_providers, *(p.name for p in providers)}
        for alias in aliases.values():
            for target in alias.targets:
                if target.provider not in known:
                    problems.append(
                        Problem(
                            alias.line,
                            f"alias {alias.name!r}: unknown provider {target.provider!r} "
                            f"(known: {', '.join(sorted(known))})",
                        )
                    )
    if problems:
        raise AliasFileError(source, sorted(problems, key=lambda p: p.line))
    return AliasTable(
        MappingProxyType(aliases),
        table_version(data),
        source,
        tuple(providers),
        defaults[0],
        MappingProxyType(prices),
    )


def _parse(
    data: bytes,
    problems: list[Problem],
    providers: list[ProviderSpec],
    defaults: list[Policy],
    prices: dict[str, Price],
) -> dict[str, Alias]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(0, f"file is not UTF-8: {exc}"))
        return {}
    yaml_problems: list[YamlProblem] = []
    try:
        root = read_located(text, yaml_problems)
    except YamlProblem as exc:
        problems.append(Problem(exc.line, exc.message))
        return {}
    problems.extend(Problem(p.line, p.message) for p in yaml_problems)
    if root is None:
        problems.append(Problem(0, "file is empty (expected a top-level 'aliases:' mapping)"))
        return {}
    if not isinstance(root.value, dict):
        problems.append(Problem(root.line, "top level must be a mapping with an 'aliases' key"))
        return {}
    for key, entry in root.value.items():
        if key not in TOP_LEVEL_KEYS:
            problems.append(
                Problem(
                    entry.line,
                    f"unknown top-level key {key!r} "
                    f"(expected: {', '.join(sorted(TOP_LEVEL_KEYS))})",
                )
            )
    if "providers" in root.value:
        providers.extend(_parse_providers(root.value["providers"], problems))
    if "defaults" in root.value:
        defaults[0] = _parse_defaults(root.value["defaults"], problems)
    if "prices" in root.value:
        prices.update(_parse_prices(root.value["prices"], problems))
    section = root.value.get("aliases")
    if section is None or section.value is None:
        return {}
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'aliases' must be a mapping of name: target"))
        return {}
    aliases: dict[str, Alias] = {}
    for name, entry in section.value.items():
        alias = _parse_alias(name, entry, problems, defaults[0])
        if alias is not None:
            aliases[name] = alias
    return aliases


def _parse_prices(section: Located, problems: list[Problem]) -> dict[str, Price]:
    """provider:model -> {input, output, cached_input} in USD per million tokens."""
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
        unknown = set(plain or {}) - {"input", "output", "cached_input"}
        if price is None or unknown:
            problems.append(
                Problem(
                    entry.line,
                    f"prices: {spec!r} needs input and output (and optionally cached_input), "
                    "numbers of USD per million tokens, and nothing else",
                )
            )
            continue
        found[str(target)] = price
    return found


def _parse_defaults(section: Located, problems: list[Problem]) -> Policy:
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'defaults' must be a mapping of policy keys"))
        return DEFAULT_POLICY
    _unknown_keys(section.value, POLICY_KEYS, "defaults", problems)
    return _policy(section.value, DEFAULT_POLICY, "defaults", problems)


def _policy(value: dict[str, Located], base: Policy, where: str, problems: list[Problem]) -> Policy:
    found: list[tuple[int, str]] = []
    policy = parse_policy(value, base, where, found)
    problems.extend(Problem(line, message) for line, message in found)
    return policy


def _parse_alias(
    name: str, entry: Located, problems: list[Problem], defaults: Policy
) -> Alias | None:
    where = f"alias {name!r}"
    if not name.strip():
        problems.append(Problem(entry.line, "alias name is empty"))
        return None
    value = entry.value
    if isinstance(value, str):
        target = _spec_target(value, entry.line, where, problems)
        return Alias(name, (target,), entry.line, defaults) if target else None
    if not isinstance(value, dict):
        problems.append(
            Problem(
                entry.line,
                f"{where}: expected 'provider:model' or a map with provider and model, "
                f"got {_kind(value)}",
            )
        )
        return None
    before = len(problems)
    _unknown_keys(value, ALIAS_MAP_KEYS, where, problems)
    if "targets" in value:
        if "provider" in value or "model" in value:
            problems.append(
                Problem(
                    entry.line, f"{where}: give either 'targets' or 'provider'/'model', not both"
                )
            )
        targets = _parse_targets(value["targets"], where, problems)
    else:
        single = _map_target(value, entry.line, where, problems)
        targets = [single] if single else []
    policy = _policy(value, defaults, where, problems)
    if len(problems) > before or not targets:
        return None
    return Alias(name, tuple(targets), entry.line, policy)


def _parse_targets(entry: Located, where: str, problems: list[Problem]) -> list[Target]:
    if not isinstance(entry.value, list) or not entry.value:
        problems.append(Problem(entry.line, f"{where}: 'targets' must be a non-empty list"))
        return []
    targets: list[Target] = []
    for index, item in enumerate(entry.value):
        item_where = f"{where} target {index + 1}"
        target: Target | None
        if isinstance(item.value, str):
            target = _spec_target(item.value, item.line, item_where, problems)
        elif isinstance(item.value, dict):
            _unknown_keys(item.value, TARGET_MAP_KEYS, item_where, problems)
            target = _map_target(item.value, item.line, item_where, problems)
            weight = item.value.get("weight")
            if target is not None and weight is not None:
                number = positive_number(weight.value)
                if number is None:
                    problems.append(
                        Problem(weight.line, f"{item_where}: weight must be a positive number")
                    )
                else:
                    target = Target(target.provider, target.model, number)
        else:
            problems.append(
                Problem(
                    item.line,
                    f"{item_where}: expected 'provider:model' or a map, got {_kind(item.value)}",
                )
            )
            target = None
        if target is not None:
            targets.append(target)
    return targets


def _map_target(
    value: dict[str, Located], line: int, where: str, problems: list[Problem]
) -> Target | None:
    if "target" in value:
        if "provider" in value or "model" in value:
            problems.append(
                Problem(line, f"{where}: give either 'target' or 'provider'/'model', not both")
            )
            return None
        spec = value["target"]
        if not isinstance(spec.value, str):
            problems.append(Problem(spec.line, f"{where}: 'target' must be 'provider:model'"))
            return None
        return _spec_target(spec.value, spec.line, where, problems)
    provider = _required_string(value, "provider", line, where, problems)
    model = _required_string(value, "model", line, where, problems)
    if provider is None or model is None:
        return None
    return Target(provider.lower(), model)


def _required_string(
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


def _spec_target(spec: str, line: int, where: str, problems: list[Problem]) -> Target | None:
    try:
        return parse_spec(spec)
    except SpecError as exc:
        problems.append(Problem(line, f"{where}: {exc}"))
        return None


def _unknown_keys(
    value: dict[str, Located], allowed: frozenset[str], where: str, problems: list[Problem]
) -> None:
    for key, entry in value.items():
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            problems.append(
                Problem(entry.line, f"{where}: unknown key {key!r} (expected: {expected})")
            )


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _parse_providers(section: Located, problems: list[Problem]) -> list[ProviderSpec]:
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
        _unknown_keys(entry.value, PROVIDER_KEYS, where, problems)
        base_url = _required_string(entry.value, "base_url", entry.line, where, problems)
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            problems.append(
                Problem(
                    entry.value["base_url"].line, f"{where}: base_url must start with http(s)://"
                )
            )
        key_env: str | None = None
        if "api_key_env" in entry.value:
            key_env = _required_string(entry.value, "api_key_env", entry.line, where, problems)
        headers: list[tuple[str, str]] = []
        if "headers" in entry.value:
            raw = entry.value["headers"]
            if not isinstance(raw.value, dict) or not all(
                isinstance(v.value, str) for v in raw.value.values()
            ):
                problems.append(Problem(raw.line, f"{where}: headers must map names to strings"))
            else:
                headers = [(k.lower(), str(v.value)) for k, v in raw.value.items()]
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
            )
        )
    return specs
