"""The package's shape: no import cycles, every module importable alone, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import runestone

PACKAGE = Path(runestone.__file__).parent
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = ["runestone", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__main__.py"
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(name: str, tree: ast.AST) -> set[str]:
    """Every runestone module ``name`` imports, at the top or inside a function."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]  # never the root package


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs: each import's target and those of its
    parent packages that are not already being imported (parents of the importer)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        own = set(_ancestors(name))
        for target in _imported(name, ast.parse(path.read_text())):
            edges.add(target)
            edges.update(p for p in _ancestors(target) if p not in own and p != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_and_package_imports() -> None:
    graph = import_graph()
    assert "runestone.providers.errors" in graph["runestone.providers.openai_compat"]
    # The any-llm adapter is reached through the registry, not imported by the router.
    assert "runestone.providers.anyllm" not in graph["runestone.routing.router"]
    assert "runestone.providers" in graph["runestone.routing.router"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    # Each module first in a clean runestone namespace: no module works only because
    # another happened to be imported before it.
    code = (
        "import importlib, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'runestone']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) == len(MODULES)


def test_no_module_past_the_size_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"split these modules (over {MAX_LINES} lines): {too_long}"


def test_the_app_module_holds_lifespan_and_the_stack_only() -> None:
    tree = ast.parse((PACKAGE / "http" / "_app.py").read_text())
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert classes == ["RunestoneApp"]
    assert functions == []


#: The layers, lowest first: a module may import its own layer and the ones below it,
#: never one above (DESIGN.md's picture: http over the exchange over routing over the
#: providers, with wire formats, translators and streams beneath the providers).
LAYERS: list[set[str]] = [
    {"errors", "_version", "pricing"},
    {"streams", "translate"},
    {"providers"},
    {
        "protocols",
        "aliases",
        "access",
        "telemetry",
        "conversations",
        "keyring",
        "alerts",
        "cache",
        "guards",
    },
    {"routing"},
    {"config", "_gateway", "console", "remote"},
    {"exchange"},
    {"_library", "http"},
    {
        "_api",
        "cli",
        "_cli_keys",
        "_cli_admin",
        "_cli_config",
        "_preflight",
        "runestone",
        "__main__",
    },
]


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "runestone"
    return next(n for n, layer in enumerate(LAYERS) if part in layer)


def test_no_import_runs_back_up_the_layers() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert not upward, "imports that run back up the layers:\n" + "\n".join(upward)


def _reads_setting(node: ast.AST) -> bool:
    """``env.get("RUNESTONE_...")`` or ``environ["RUNESTONE_..."]`` read (not written)."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("get", "getenv")
        and node.args
    ):
        first = node.args[0]
        return isinstance(first, ast.Constant) and str(first.value).startswith("RUNESTONE_")
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        key = node.slice
        return isinstance(key, ast.Constant) and str(key.value).startswith("RUNESTONE_")
    return False


def test_every_setting_is_read_in_config_only() -> None:
    readers = sorted(
        name
        for name, path in MODULES.items()
        if name != "runestone.config"
        and any(_reads_setting(node) for node in ast.walk(ast.parse(path.read_text())))
    )
    assert readers == [], f"RUNESTONE_* read outside runestone.config: {readers}"


#: Where loop timers may be set: a stream's clocks, and what is not a stream's (the
#: server's one sweep, the store's retry, the shutdown's grace).
TIMER_MODULES = {
    "runestone.streams.clocks",
    "runestone.http._server",
    "runestone.access._gate",
    "runestone._gateway",
}


def test_a_streams_timers_live_in_its_clocks() -> None:
    setters = sorted(
        name
        for name, path in MODULES.items()
        if name not in TIMER_MODULES
        and any(
            isinstance(node, ast.Attribute) and node.attr in ("call_later", "call_at")
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert setters == [], f"loop timers set outside runestone.streams.clocks: {setters}"


def _writes_an_event(node: ast.AST) -> bool:
    """``b"data: " + ...`` or ``b"event: " + ...``: an SSE event put together by hand."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
        return False
    left = node.left
    while isinstance(left, ast.BinOp):
        left = left.left
    return (
        isinstance(left, ast.Constant)
        and isinstance(left.value, bytes)
        and left.value.startswith((b"data:", b"event:"))
    )


def test_events_are_written_by_the_one_encoder() -> None:
    writers = sorted(
        name
        for name, path in MODULES.items()
        if name != "runestone.streams.sse"
        and any(_writes_an_event(node) for node in ast.walk(ast.parse(path.read_text())))
    )
    assert writers == [], f"SSE events written outside streams.sse.encode: {writers}"
