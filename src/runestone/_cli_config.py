"""``runestone config``: the effective configuration, secrets masked (as ``nginx -T``
shows what nginx will run with): every setting, the alias file, and every provider a
target could use, with the address it is called at and whether it has a key."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from runestone.aliases import load_alias_file
from runestone.config import Settings
from runestone.providers import registered_specs, resolve_endpoint
from runestone.providers._specs import without_userinfo

_SECRET = ("token",)


def add_config_command(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print the effective configuration, secrets masked",
        description="Print every setting as `runestone serve` would use it (RUNESTONE_* "
        "variables and their defaults), the alias file, and the providers that are "
        "configured: tokens and keys masked, credentials cut from URLs.",
    )
    config.set_defaults(handler=_print_config)


def _shown(name: str, value: object) -> str:
    if value is None:
        return "(unset)"
    if any(word in name for word in _SECRET):
        return "(set, masked)"
    if name == "redis_url":
        return without_userinfo(str(value))
    return str(value)


def _print_config(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print("# settings")
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            for inner in dataclasses.fields(value):
                shown = _shown(inner.name, getattr(value, inner.name))
                print(f"{field.name}.{inner.name} = {shown}")
        else:
            print(f"{field.name} = {_shown(field.name, value)}")
    table = load_alias_file(settings.aliases_path)
    print("\n# alias file")
    print(f"path = {settings.aliases_path}")
    print(f"aliases = {len(table.aliases)}, keys = {len(table.access.keys)}")
    print("\n# providers configured (address, key)")
    for spec in [*registered_specs(), *table.providers]:
        endpoint = resolve_endpoint(spec, os.environ)
        if endpoint.configured and spec.wire_format != "mock":
            key = "key set" if endpoint.api_key else "no key"
            print(f"{spec.name} = {endpoint.public_url or spec.wire_format} ({key})")
    return 0
