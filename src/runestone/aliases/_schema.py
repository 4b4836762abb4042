"""The alias table's types: targets, aliases, the immutable table, and file problems."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from runestone.aliases._policy import DEFAULT_POLICY, Policy
from runestone.pricing import Price
from runestone.providers import ProviderSpec


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
