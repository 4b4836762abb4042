"""The ``runestone`` command: serve the gateway and inspect alias files."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runestone._cli_config import add_config_command
from runestone._cli_keys import add_key_commands
from runestone._version import __version__
from runestone.aliases import (
    AliasFileError,
    AliasTable,
    SpecError,
    load_alias_file,
    parse_spec,
)
from runestone.providers import known_provider_names


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    from runestone.config import ConfigError

    try:
        result: int = args.handler(args)
        sys.stdout.flush()
    except ConfigError as exc:  # a RUNESTONE_* setting with a value that cannot be used
        print(f"runestone: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader left (runestone status | head -3): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runestone",
        description="Runestone, an LLM gateway: OpenAI-compatible API, aliases, failover.",
    )
    parser.add_argument("--version", action="version", version=f"runestone {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway's HTTP server",
        description="Serve the OpenAI-compatible API (POST /v1/chat/completions, GET "
        "/v1/models, /health/live, /health/ready). Without RUNESTONE_SERVICE_TOKEN anyone "
        "who can reach the port can use your provider keys: keep it on 127.0.0.1.",
    )
    serve.add_argument("--host", help="address to bind (RUNESTONE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (RUNESTONE_PORT, default 4001)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes (RUNESTONE_WORKERS, default 1; one per core)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    serve.add_argument(
        "--access-log", action="store_true", help="log every request line (off by default)"
    )
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, how long streams in flight may go on before they end "
        "with an in-band gateway_shutting_down (RUNESTONE_GRACEFUL_TIMEOUT, default 30); a "
        "second Ctrl-C exits at once",
    )
    serve.set_defaults(handler=_serve)

    status = commands.add_parser(
        "status",
        help="show a running gateway's alias table and circuit breakers",
        description="Read /health/ready of a running gateway and print its alias table "
        "status and every target's circuit breaker.",
    )
    status.add_argument(
        "--url",
        help="the gateway (default: RUNESTONE_URL, else http://127.0.0.1:RUNESTONE_PORT)",
    )
    status.set_defaults(handler=_status)

    aliases = commands.add_parser(
        "aliases",
        help="list, resolve and check model aliases",
        description="Inspect the alias file (RUNESTONE_ALIASES_PATH, else the packaged one).",
    )
    alias_commands = aliases.add_subparsers(title="alias commands", metavar="ACTION")
    aliases.set_defaults(handler=lambda _args: _usage(aliases))

    listing = alias_commands.add_parser(
        "list",
        help="print every alias and its targets",
        description="Print a table of alias -> targets, in file order.",
    )
    _add_file_option(listing)
    listing.set_defaults(handler=_aliases_list)

    resolve = alias_commands.add_parser(
        "resolve",
        help="print the provider:model a name resolves to",
        description="Print the provider:model target(s) NAME resolves to, one per line, in "
        "the order they are tried. Exit 1 for an unknown name.",
    )
    resolve.add_argument("name", metavar="NAME", help="an alias, or a provider:model spec")
    _add_file_option(resolve)
    resolve.set_defaults(handler=_aliases_resolve)

    check = alias_commands.add_parser(
        "check",
        help="validate an alias file (for CI before deploying an edit)",
        description="Validate an alias file and print every problem with its line. "
        "Exit 0 when valid, 1 on any problem.",
    )
    check.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        type=Path,
        help="file to check (default: RUNESTONE_ALIASES_PATH, else the packaged file)",
    )
    check.set_defaults(handler=_aliases_check)
    add_key_commands(commands, _add_file_option, _alias_path)
    add_config_command(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import logging

    from runestone.config import ConfigError, Settings

    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
    if args.graceful_timeout is not None:
        if args.graceful_timeout < 0:
            print("runestone: --graceful-timeout must not be negative", file=sys.stderr)
            return 1
        # Workers read their settings from the environment they inherit.
        os.environ["RUNESTONE_GRACEFUL_TIMEOUT"] = str(args.graceful_timeout or 0.001)
    # A gateway that cannot do what it is configured to do does not start: exit 2, one
    # line per problem, here rather than inside every worker.
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"runestone: {exc}", file=sys.stderr)
        return 2
    table = _load(None)
    if table is None:
        return 2
    from runestone._preflight import problems

    found = problems(settings, os.environ)
    for problem in found:
        print(f"runestone: {problem}", file=sys.stderr)
    if found:
        return 2
    if settings.gateway_mode:
        print(
            "runestone: RUNESTONE_GATEWAY_MODE is for library callers; a server always calls "
            "providers itself and never forwards to another gateway (ignored)",
            file=sys.stderr,
        )
    host = args.host or settings.host
    port = args.port or settings.port
    if settings.service_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"runestone: warning: serving on {host} without RUNESTONE_SERVICE_TOKEN; anyone "
            "who reaches this port can spend your provider keys",
            file=sys.stderr,
        )
    workers = args.workers or settings.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # Each worker writes its metrics here, and a scrape of any worker sums them all.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="runestone-metrics-")
    import uvicorn

    uvicorn.run(
        "runestone.http._serve:serve_app",
        factory=True,
        log_config=_log_config(args.log_level.upper()),
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="runestone.http._server:BoundedHttpToolsProtocol",
        lifespan="on",
        access_log=args.access_log,
        # X-Forwarded-For and -Proto rewrite the client address and scheme, which only
        # uvicorn's access log reads: without it, a middleware per request for nothing.
        proxy_headers=args.access_log,
        log_level=args.log_level,
        server_header=False,
        # uvicorn's own limit, a backstop: by then the gateway has ended every stream.
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout) + 5,
    )
    return 0


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _log_config(level: str) -> dict[str, object]:
    """uvicorn's logging plus Runestone's own loggers.

    uvicorn applies this in every worker process it starts; logging configured in the
    parent alone (``basicConfig``) never reaches ``--workers N`` processes, whose request
    log and alias reloads were then lost.
    """
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["runestone"] = {"format": _LOG_FORMAT}
    config["handlers"]["runestone"] = {
        "class": "logging.StreamHandler",
        "formatter": "runestone",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["runestone"] = {"handlers": ["runestone"], "level": level, "propagate": False}
    return config


def _status(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    from runestone.config import Settings

    settings = Settings.from_env()
    url = args.url or settings.gateway_url or f"http://127.0.0.1:{settings.port}"
    url = url.rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(f"{url}/health/ready")
    token = settings.service_token or settings.metrics_token
    if token:  # the details (aliases, breakers) are for the operators' token
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            ready = json.load(response)
    except urllib.error.HTTPError as exc:
        ready = json.load(exc)
    except OSError as exc:
        print(f"runestone: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    aliases = ready.get("aliases", {})
    state = "ok" if aliases.get("ok") else f"LAST RELOAD FAILED: {aliases.get('error')}"
    print(f"gateway {url}: {ready.get('status')}")
    if "count" not in aliases:
        print(
            f"aliases: version {aliases.get('version')}, last reload "
            f"{'ok' if aliases.get('ok') else 'FAILED'} (set RUNESTONE_SERVICE_TOKEN to see "
            "the details and the breakers)"
        )
        return 0 if ready.get("status") == "ready" else 1
    print(
        f"aliases: {aliases.get('count')} from {aliases.get('source')} "
        f"(version {aliases.get('version')}; {aliases.get('reloads_ok')} reloads, "
        f"{aliases.get('reloads_failed')} failed; {state})"
    )
    breakers = ready.get("breakers") or []
    if not breakers:
        print("breakers: none yet (no target has been called)")
        return 0 if ready.get("status") == "ready" else 1
    width = max(len(b["target"]) for b in breakers)
    print(f"\n{'TARGET':<{width}}  {'STATE':<9}  FAILURES  RETRY_IN  IN_FLIGHT")
    for b in breakers:
        print(
            f"{b['target']:<{width}}  {b['state']:<9}  {b['consecutive_failures']:>8}  "
            f"{b['retry_in']:>7}s  {b['in_flight']:>9}"
        )
    return 0 if ready.get("status") == "ready" else 1


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="alias file (default: RUNESTONE_ALIASES_PATH, else the packaged file)",
    )


def _alias_path(given: Path | None) -> Path:
    if given is not None:
        return given
    from runestone.config import Settings

    return Settings.from_env().aliases_path


def _load(given: Path | None) -> AliasTable | None:
    try:
        return load_alias_file(_alias_path(given), known_provider_names())
    except AliasFileError as exc:
        print(f"runestone: invalid alias file\n{exc}", file=sys.stderr)
        return None


def _aliases_list(args: argparse.Namespace) -> int:
    table = _load(args.file)
    if table is None:
        return 1
    every = [*table.aliases.values(), *(alias for _, alias in table.patterns)]
    width = max((len(alias.name) for alias in every), default=5)
    print(f"{'ALIAS':<{width}}  TARGETS")
    for alias in every:
        print(f"{alias.name:<{width}}  {', '.join(str(t) for t in alias.targets)}")
    print(f"\n{len(table)} aliases from {table.source} (version {table.version})")
    return 0


def _aliases_resolve(args: argparse.Namespace) -> int:
    table = _load(args.file)
    if table is None:
        return 1
    name: str = args.name
    alias = table.match(name)
    if alias is not None:
        for target in alias.targets:
            print(target)
        return 0
    if ":" in name:
        try:
            print(parse_spec(name))
        except SpecError as exc:
            print(f"runestone: {exc}", file=sys.stderr)
            return 1
        return 0
    message = f"runestone: unknown alias {name!r}"
    close = difflib.get_close_matches(name, list(table.aliases), n=3)
    lowered = [a for a in table.aliases if a.lower() == name.lower()]
    hints = lowered or close
    if hints:
        message += f" (did you mean {', '.join(repr(h) for h in hints)}?)"
    message += "; name an alias from `runestone aliases list` or use provider:model"
    print(message, file=sys.stderr)
    return 1


def _aliases_check(args: argparse.Namespace) -> int:
    path = _alias_path(args.path)
    try:
        table = load_alias_file(path, known_provider_names())
    except AliasFileError as exc:
        for problem in exc.problems:
            print(problem.format(exc.source))
        count = len(exc.problems)
        print(f"{count} problem{'s' if count != 1 else ''} in {path}", file=sys.stderr)
        return 1
    print(f"{path}: OK, {len(table)} aliases (version {table.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
