"""``runestone keys``: make a client key, and show spend per key, team and model; with
a gateway named (``--url``, ``RUNESTONE_URL``), the admin API's verbs (``_cli_admin``)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from pathlib import Path
from typing import Any

from runestone._cli_admin import (
    add_admin_commands,
    budgets_of,
    call,
    create,
    gateway_of,
    settings_from,
    show,
)
from runestone.aliases import AliasFileError, load_alias_file


def add_key_commands(commands: Any, file_option: Any, alias_path: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="create client keys and show their usage",
        description="Client keys, their limits and budgets live in the alias file's 'keys:'.",
    )
    actions = keys.add_subparsers(title="key commands", metavar="ACTION")
    keys.set_defaults(handler=lambda _args: keys.print_help() or 2)

    create = actions.add_parser(
        "create",
        help="print a new key (once) and its alias-file entry",
        description="Print a new random key, which is shown only this once, and the YAML "
        "entry with its SHA-256 hash to paste under 'keys:' in the alias file. The key "
        "itself is stored nowhere.",
    )
    create.add_argument("id", metavar="ID", help="the key's id: shown in logs, metrics, usage")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute (input + output)")
    create.add_argument("--max-parallel", type=int, help="requests in flight")
    create.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="USD/PERIOD",
        help="a spend budget, e.g. 50/day or 1000/month (a trailing ~ makes it rolling: "
        "24/day~); may be repeated",
    )
    create.add_argument("--models", help="comma-separated aliases or patterns it may use")
    create.add_argument("--team", help="the team whose limits it shares")
    create.add_argument("--expires", help="last day it works, YYYY-MM-DD (UTC)")
    create.add_argument("--role", choices=("client", "team_admin", "admin"))
    create.add_argument("--metadata", help="a JSON object (with --url)")
    create.add_argument(
        "--url",
        help="make it in a running gateway (default RUNESTONE_URL; the token is "
        "RUNESTONE_ADMIN_TOKEN): printed with its secret, and nothing to paste",
    )
    create.set_defaults(handler=_create)
    add_admin_commands(actions)

    usage = actions.add_parser(
        "usage",
        help="print spend per key, team and model, read from the store",
        description="Read the limits' store (RUNESTONE_REDIS_URL, else the SQLite file at "
        "RUNESTONE_STATE_PATH) and print every key's and team's limits in their current "
        "windows, and the spend per model today and this month.",
    )
    usage.add_argument("id", metavar="ID", nargs="?", help="one key only")
    usage.add_argument("--json", action="store_true", help="the report as JSON")
    usage.add_argument("--url", help="ask a running gateway instead (default RUNESTONE_URL)")
    file_option(usage)
    usage.set_defaults(handler=lambda args: _usage(args, alias_path))


def _create(args: argparse.Namespace) -> int:
    from runestone.access import digest, new_key

    gateway = gateway_of(args)
    if gateway is not None:
        budgets = budgets_of(args.budget)
        if budgets is None:
            return 2
        return create(gateway, args.id, settings_from(args, budgets))
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", args.id):
        print("runestone: a key id is letters, digits and '.-_'", file=sys.stderr)
        return 2
    lines = [f"  {args.id}:"]
    key = new_key()
    lines.append(f"    hash: sha256:{digest(key)}")
    if args.models:
        models = ", ".join(f'"{m.strip()}"' for m in args.models.split(",") if m.strip())
        lines.append(f"    models: [{models}]")
    for name in ("rpm", "tpm", "max_parallel"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                print(f"runestone: --{name.replace('_', '-')} must be positive", file=sys.stderr)
                return 2
            lines.append(f"    {name}: {value}")
    budgets = budgets_of(args.budget)
    if budgets is None:
        return 2
    if budgets:
        written = [
            f"{{usd: {b['usd']:g}, per: {b['per']}{', rolling: true' if b.get('rolling') else ''}}}"
            for b in budgets
        ]
        lines.append(f"    budgets: [{', '.join(written)}]")
    if args.expires:
        try:
            dt.date.fromisoformat(args.expires)
        except ValueError:
            print("runestone: --expires must be YYYY-MM-DD", file=sys.stderr)
            return 2
        lines.append(f"    expires: {args.expires}")
    if args.team:
        lines.append(f"    team: {args.team}")
    if args.role:
        lines.append(f"    role: {args.role}")
    print(f"key: {key}")
    print("(shown only now: give it to its owner; the gateway keeps only its hash)\n")
    print("keys:")
    print("\n".join(lines))
    return 0


def _usage(args: argparse.Namespace, alias_path: Any) -> int:
    from runestone.access import StateError, usage_report
    from runestone.config import Settings

    gateway = gateway_of(args)
    if gateway is not None:
        where = f"/admin/keys/{args.id}/usage" if args.id else "/admin/usage"
        status, answer = call(gateway, "GET", where)
        if status != 200 or args.json:
            return show(status, answer)
        _print_report(answer)
        return 0
    path: Path = alias_path(args.file)
    try:
        table = load_alias_file(path)
    except AliasFileError as exc:
        print(f"runestone: invalid alias file\n{exc}", file=sys.stderr)
        return 1
    if args.id is not None and table.access.by_id(args.id) is None:
        print(f"runestone: no key {args.id!r} in {path}", file=sys.stderr)
        return 1

    async def read() -> dict[str, Any]:
        store = Settings.from_env().open_store()
        try:
            return await usage_report(table.access, store, args.id)
        finally:
            await store.aclose()

    try:
        report = asyncio.run(read())
    except StateError as exc:
        print(f"runestone: {exc}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    print(f"usage from the {report['store']} store at {report['generated_at']}")
    for kind in ("keys", "teams"):
        for owner in report[kind]:
            team = f" (team {owner['team']})" if owner.get("team") else ""
            print(f"\n{kind[:-1]} {owner['id']}{team}")
            if not owner["limits"]:
                print("  no limits")
            for limit in owner["limits"]:
                parts = [f"  {limit['limit']:<12} max {limit['max']:g}"]
                if "used" in limit:
                    parts.append(f"used {limit['used']:g} until {limit['resets']}")
                if "reserved" in limit:
                    parts.append(f"reserved {limit['reserved']:g}")
                if "held" in limit:
                    parts.append(f"in flight {limit['held']:g}")
                print(", ".join(parts))
    for window in ("today", "month"):
        rows = report["spend"][window]
        print(f"\nspend {'today' if window == 'today' else 'this month'} (UTC):")
        if not rows:
            print("  none")
        for row in rows:
            print(
                f"  {row['key']:<20} {row['model']:<36} {row['requests']:>7} req "
                f"{row['input_tokens'] + row['output_tokens']:>10} tok  ${row['usd']:.4f}"
            )
