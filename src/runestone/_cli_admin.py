"""``runestone keys`` against a running gateway: its admin API, over HTTP.

The gateway is ``--url`` or ``RUNESTONE_URL``; the credentials are the operators'
(``RUNESTONE_ADMIN_TOKEN``, else ``RUNESTONE_SERVICE_TOKEN``) from the environment,
never an argument (which other users of the machine could read in the process list).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

from runestone.aliases import PERIODS

_BUDGET = re.compile(r"^(\d+(?:\.\d+)?)/(" + "|".join(PERIODS) + r")(~?)$")
#: The settings ``create`` and ``update`` take, as (option, setting).
NUMBERS = (("--rpm", "rpm"), ("--tpm", "tpm"), ("--max-parallel", "max_parallel"))


def gateway_of(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """The gateway's URL and token, or None when no gateway is named."""
    from runestone.config import Settings

    settings = Settings.from_env()
    url = getattr(args, "url", None) or settings.gateway_url
    if not url:
        return None
    token = settings.admin_token or settings.service_token
    return url.rstrip("/").removesuffix("/v1"), token


def call(
    gateway: tuple[str, str | None], method: str, path: str, body: object = None
) -> tuple[int, Any]:
    """One admin API call: (status, JSON answer); a gateway not reached is status 0."""
    url, token = gateway
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"error": {"message": f"HTTP {exc.code}"}}
    except OSError as exc:
        return 0, {"error": {"message": f"cannot reach {url}: {exc}"}}


def settings_from(args: argparse.Namespace, budgets: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The key settings the options name (only those given)."""
    found: dict[str, Any] = {}
    for option, name in NUMBERS:
        value = getattr(args, option[2:].replace("-", "_"), None)
        if value is not None:
            found[name] = value
    if budgets:
        found["budgets"] = budgets
    if getattr(args, "models", None):
        found["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in ("team", "expires", "role"):
        value = getattr(args, name, None)
        if value is not None:
            found[name] = value
    metadata = getattr(args, "metadata", None)
    if metadata is not None:
        try:
            found["metadata"] = json.loads(metadata)
        except ValueError:
            raise SystemExit("runestone: --metadata must be a JSON object") from None
    return found


def show(status: int, answer: Any, *, quiet_ok: bool = False) -> int:
    """Print an answer (or its error) and return the exit status."""
    if 200 <= status < 300:
        if not quiet_ok:
            print(json.dumps(answer, indent=2))
        return 0
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    print(f"runestone: {error.get('message', answer)}", file=sys.stderr)
    return 1


def create(gateway: tuple[str, str | None], key_id: str, settings: dict[str, Any]) -> int:
    status, answer = call(gateway, "POST", "/admin/keys", {"id": key_id, **settings})
    if status != 201:
        return show(status, answer)
    secret = answer.pop("secret")
    print(f"key: {secret}")
    print("(shown only now: give it to its owner; the gateway keeps only its hash)\n")
    print(json.dumps(answer, indent=2))
    return 0


def budgets_of(texts: list[str]) -> list[dict[str, Any]] | None:
    """``--budget`` values as budgets; None (after saying why) if one is malformed."""
    budgets: list[dict[str, Any]] = []
    for text in texts:
        match = _BUDGET.match(text)
        if match is None:
            print(
                f"runestone: --budget {text!r}: expected USD/PERIOD, e.g. 50/day", file=sys.stderr
            )
            return None
        amount, per, rolling = match.groups()
        budget: dict[str, Any] = {"usd": float(amount), "per": per}
        if rolling:
            budget["rolling"] = True
        budgets.append(budget)
    return budgets


def add_admin_commands(actions: Any) -> None:
    """``list``, ``show``, ``update``, ``rotate`` and ``revoke``: a running gateway's."""

    def url_option(parser: Any) -> None:
        parser.add_argument(
            "--url", help="the gateway (default RUNESTONE_URL); token: RUNESTONE_ADMIN_TOKEN"
        )

    listing = actions.add_parser("list", help="list a running gateway's keys")
    listing.add_argument("--team", help="only this team's keys")
    listing.add_argument("--include-revoked", action="store_true")
    url_option(listing)
    listing.set_defaults(handler=_list)

    for verb, text in (("show", "print a key's settings"), ("revoke", "revoke a key")):
        parser = actions.add_parser(verb, help=text)
        parser.add_argument("id", metavar="ID")
        url_option(parser)
        parser.set_defaults(handler=_show if verb == "show" else _revoke)

    rotate = actions.add_parser("rotate", help="give a key a new secret (printed once)")
    rotate.add_argument("id", metavar="ID")
    rotate.add_argument(
        "--grace", type=float, default=3600, help="seconds the old secret keeps working"
    )
    url_option(rotate)
    rotate.set_defaults(handler=_rotate)

    update = actions.add_parser("update", help="change a key's settings")
    update.add_argument("id", metavar="ID")
    for option, _ in NUMBERS:
        update.add_argument(option, type=int)
    update.add_argument("--budget", action="append", default=[], metavar="USD/PERIOD")
    update.add_argument("--models")
    update.add_argument("--team")
    update.add_argument("--expires")
    update.add_argument("--metadata", help="a JSON object")
    update.add_argument("--unset", action="append", default=[], metavar="SETTING")
    blocking = update.add_mutually_exclusive_group()
    blocking.add_argument("--block", action="store_true")
    blocking.add_argument("--unblock", action="store_true")
    url_option(update)
    update.set_defaults(handler=_update)


def _needs_gateway(args: argparse.Namespace) -> tuple[str, str | None]:
    gateway = gateway_of(args)
    if gateway is None:
        raise SystemExit(f"runestone: keys {args.verb}: name the gateway (--url or RUNESTONE_URL)")
    return gateway


def _list(args: argparse.Namespace) -> int:
    args.verb = "list"
    query = f"?include_revoked={'true' if args.include_revoked else 'false'}"
    if args.team:
        query += f"&team={args.team}"
    status, answer = call(_needs_gateway(args), "GET", f"/admin/keys{query}")
    if status != 200:
        return show(status, answer)
    for key in answer["keys"]:
        state = "revoked" if key["revoked"] else "blocked" if key["blocked"] else "active"
        print(f"{key['id']:<32} {key['source']:<5} {state:<8} team={key['team'] or '-'}")
    return 0


def _show(args: argparse.Namespace) -> int:
    args.verb = "show"
    return show(*call(_needs_gateway(args), "GET", f"/admin/keys/{args.id}"))


def _revoke(args: argparse.Namespace) -> int:
    args.verb = "revoke"
    status, answer = call(_needs_gateway(args), "DELETE", f"/admin/keys/{args.id}")
    if status == 200:
        print(f"revoked key {args.id}")
    return show(status, answer, quiet_ok=True)


def _rotate(args: argparse.Namespace) -> int:
    args.verb = "rotate"
    gateway = _needs_gateway(args)
    body = {"grace_seconds": args.grace}
    status, answer = call(gateway, "POST", f"/admin/keys/{args.id}/rotate", body)
    if status != 200:
        return show(status, answer)
    print(f"key: {answer['secret']}")
    print(f"(shown only now; the old one works for {args.grace:g} more seconds)")
    return 0


def _update(args: argparse.Namespace) -> int:
    args.verb = "update"
    budgets = budgets_of(args.budget)
    if budgets is None:
        return 2
    body = settings_from(args, budgets)
    for name in args.unset:
        body[name] = None
    if args.block or args.unblock:
        body["blocked"] = bool(args.block)
    if not body:
        print("runestone: keys update: nothing to change", file=sys.stderr)
        return 2
    return show(*call(_needs_gateway(args), "PATCH", f"/admin/keys/{args.id}", body))
