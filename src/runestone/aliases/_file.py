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

from collections.abc import Collection
from types import MappingProxyType

from runestone.aliases._access_section import hosted_tools, parse_access
from runestone.aliases._cache_section import cache_spec
from runestone.aliases._guard_specs import GuardSpec
from runestone.aliases._guards_section import guard_names, parse_guards, unknown_guards
from runestone.aliases._keys import NO_ACCESS, AccessTable
from runestone.aliases._policy import (
    DEFAULT_POLICY,
    POLICY_KEYS,
    Policy,
    parse_policy,
    positive_number,
)
from runestone.aliases._schema import (
    MODEL_PLACEHOLDER,
    Alias,
    AliasFileError,
    AliasTable,
    Problem,
    Target,
    pattern_regex,
    table_version,
)
from runestone.aliases._sections import (
    kind,
    parse_prices,
    parse_providers,
    required_string,
    spec_target,
    unknown_keys,
)
from runestone.aliases._yaml_nodes import Located, YamlProblem, read_located
from runestone.pricing import Price
from runestone.providers import ProviderSpec

TOP_LEVEL_KEYS = frozenset(
    {
        "aliases",
        "providers",
        "defaults",
        "prices",
        "allow_shrink",
        "keys",
        "teams",
        "access",
        "guards",
    }
)
ALIAS_MAP_KEYS = (
    frozenset(
        {
            "provider",
            "model",
            "targets",
            "context_fallback",
            "hosted_tools",
            "cache",
            "prompt_cache",
            "guards",
        }
    )
    | POLICY_KEYS
)
TARGET_MAP_KEYS = frozenset({"provider", "model", "target", "weight", "prefill"})


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
    flags: dict[str, bool] = {}
    access: list[AccessTable] = [NO_ACCESS]
    guards: dict[str, GuardSpec] = {}
    aliases = _parse(data, problems, providers, defaults, prices, flags, access, guards)
    problems.extend(unknown_guards(guards, aliases.values(), access[0]))
    if known_providers is not None:
        known = {*known_providers, *(p.name for p in providers)}
        for alias in aliases.values():
            for target in alias.every_target:
                if target.provider not in known:
                    problems.append(
                        Problem(
                            alias.line,
                            f"alias {alias.name!r}: unknown provider {target.provider!r} "
                            f"(known: {', '.join(sorted(known))})",
                        )
                    )
    for alias in aliases.values():
        if not alias.is_pattern and any(MODEL_PLACEHOLDER in t.model for t in alias.targets):
            problems.append(
                Problem(
                    alias.line,
                    f"alias {alias.name!r}: only a pattern alias (a name with *) can use "
                    f"{MODEL_PLACEHOLDER} in a target",
                )
            )
    if problems:
        raise AliasFileError(source, sorted(problems, key=lambda p: p.line))
    exact = {name: alias for name, alias in aliases.items() if not alias.is_pattern}
    patterns = tuple(
        (pattern_regex(alias.name), alias) for alias in aliases.values() if alias.is_pattern
    )
    return AliasTable(
        MappingProxyType(exact),
        table_version(data),
        source,
        tuple(providers),
        defaults[0],
        MappingProxyType(prices),
        patterns,
        flags.get("allow_shrink", False),
        access[0],
        MappingProxyType(guards),
    )


def _parse(
    data: bytes,
    problems: list[Problem],
    providers: list[ProviderSpec],
    defaults: list[Policy],
    prices: dict[str, Price],
    flags: dict[str, bool],
    access: list[AccessTable],
    guards: dict[str, GuardSpec],
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
        providers.extend(parse_providers(root.value["providers"], problems))
    if "defaults" in root.value:
        defaults[0] = _parse_defaults(root.value["defaults"], problems)
    if "prices" in root.value:
        prices.update(parse_prices(root.value["prices"], problems))
    access[0] = parse_access(root.value, problems)
    guards.update(parse_guards(root.value.get("guards"), problems))
    if "allow_shrink" in root.value:
        entry = root.value["allow_shrink"]
        if isinstance(entry.value, bool):
            flags["allow_shrink"] = entry.value
        else:
            problems.append(Problem(entry.line, "'allow_shrink' must be true or false"))
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


def _parse_defaults(section: Located, problems: list[Problem]) -> Policy:
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'defaults' must be a mapping of policy keys"))
        return DEFAULT_POLICY
    unknown_keys(section.value, POLICY_KEYS, "defaults", problems)
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
        target = spec_target(value, entry.line, where, problems)
        return Alias(name, (target,), entry.line, defaults) if target else None
    if isinstance(value, list):  # shorthand for {targets: [...]}: these, in order
        before = len(problems)
        targets = _parse_targets(entry, where, problems)
        if len(problems) > before or not targets:
            return None
        return Alias(name, tuple(targets), entry.line, defaults)
    if not isinstance(value, dict):
        problems.append(
            Problem(
                entry.line,
                f"{where}: expected 'provider:model' or a map with provider and model, "
                f"got {kind(value)}",
            )
        )
        return None
    before = len(problems)
    unknown_keys(value, ALIAS_MAP_KEYS, where, problems)
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
    context_fallback: tuple[Target, ...] | None = None  # the other targets, by default
    if "context_fallback" in value:
        given = value["context_fallback"]
        context_fallback = ()  # [] turns the fallback off
        if given.value != []:
            context_fallback = tuple(_parse_targets(given, f"{where} context_fallback", problems))
    hosted = hosted_tools(value.get("hosted_tools"), where, problems)
    cache = cache_spec(value.get("cache"), where, problems)
    prompt_cache = value.get("prompt_cache")
    if prompt_cache is not None and not isinstance(prompt_cache.value, bool):
        problems.append(Problem(prompt_cache.line, f"{where}: prompt_cache is true|false"))
    guards = guard_names(value.get("guards"), where, problems)
    if len(problems) > before or not targets:
        return None
    return Alias(
        name,
        tuple(targets),
        entry.line,
        policy,
        context_fallback,
        hosted,
        cache,
        prompt_cache is None or bool(prompt_cache.value),
        guards,
    )


def _parse_targets(entry: Located, where: str, problems: list[Problem]) -> list[Target]:
    if not isinstance(entry.value, list) or not entry.value:
        problems.append(Problem(entry.line, f"{where}: 'targets' must be a non-empty list"))
        return []
    targets: list[Target] = []
    for index, item in enumerate(entry.value):
        item_where = f"{where} target {index + 1}"
        target: Target | None
        if isinstance(item.value, str):
            target = spec_target(item.value, item.line, item_where, problems)
        elif isinstance(item.value, dict):
            unknown_keys(item.value, TARGET_MAP_KEYS, item_where, problems)
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
            prefill = item.value.get("prefill")
            if target is not None and prefill is not None:
                if not isinstance(prefill.value, bool):
                    problems.append(
                        Problem(prefill.line, f"{item_where}: prefill must be true or false")
                    )
                else:
                    target = Target(target.provider, target.model, target.weight, prefill.value)
        else:
            problems.append(
                Problem(
                    item.line,
                    f"{item_where}: expected 'provider:model' or a map, got {kind(item.value)}",
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
        return spec_target(spec.value, spec.line, where, problems)
    provider = required_string(value, "provider", line, where, problems)
    model = required_string(value, "model", line, where, problems)
    if provider is None or model is None:
        return None
    return Target(provider.lower(), model)
