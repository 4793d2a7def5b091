"""The import rules the engine's layout promises (engine package docstring), read from the source:
every import counts, the function-local ones too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "runnerd"


def imported(path: Path) -> set[str]:
    """The runnerd modules a file imports (`from runnerd.x import y` counts as x and x.y)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in out if name.startswith("runnerd")}


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT.parent)} imports {name}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for name in sorted(imported(path))
            if name.startswith(forbidden)]


def test_the_store_and_the_queue_never_import_the_engine_or_the_layers_above() -> None:
    above = ("runnerd.engine", "runnerd.web", "runnerd.daemon", "runnerd.cli")
    assert offenders("store", (*above, "runnerd.queue")) == []
    assert offenders("queue", above) == []


def test_the_handler_modules_do_not_import_each_other_or_the_app() -> None:
    """web/app.py builds the application from the handler modules; none imports it back, and
    webhooks.py (whose body reading the others use) imports neither api nor endpoints."""
    web = ROOT / "web"
    app = {"runnerd.web.app"}
    for name in ("webhooks", "api", "endpoints", "status", "context"):
        assert not imported(web / f"{name}.py") & app, name
    assert not imported(web / "webhooks.py") & {"runnerd.web.api", "runnerd.web.endpoints"}


#: The layers, top first. A package may import only the packages after it (and the shared
#: modules models, errors and logs, which import nothing of runnerd's packages).
LAYERS = ("cli", "daemon", "web", "engine", "monitoring", "actions", "queue", "tasks", "liquid",
          "config", "store")


def package_imports() -> dict[str, set[str]]:
    """Each package's imports of the other packages."""
    out: dict[str, set[str]] = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            for name in imported(path):
                parts = name.split(".")
                if len(parts) > 1 and parts[1] in LAYERS and parts[1] != package:
                    out.setdefault(package, set()).add(parts[1])
    return out


def test_imports_flow_one_way_down_the_layers() -> None:
    """No package imports one above it, so there is no import cycle between packages."""
    upward = sorted(f"{package} imports {other}"
                    for package, others in package_imports().items() for other in others
                    if LAYERS.index(other) < LAYERS.index(package))
    assert upward == []


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)
    shared = {"models", "errors", "logs"}
    for name in shared:
        assert not {m for m in imported(ROOT / f"{name}.py")
                    if m.split(".")[1:2] and m.split(".")[1] in LAYERS}, name


def test_the_action_types_tasks_are_checked_against_are_the_executors() -> None:
    """tasks/ sits below actions/, so it checks literal action types against
    models.ACTION_TYPES: that set must be exactly the executors runnerd has."""
    from runnerd import config, models
    from runnerd.actions import executors

    settings = config.Settings(path=Path("."), database=Path("unused.db"))
    assert set(executors.build(settings)) == models.ACTION_TYPES


def test_no_module_imports_itself_through_others() -> None:
    """STYLE: imports flow one way between modules too (a package's `__init__` and its
    modules included); every import counts, the function-local ones too."""
    modules = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(
        ".__init__"): p for p in ROOT.rglob("*.py")}
    graph = {name: {m for m in _modules_imported(path, modules) if m != name}
             for name, path in modules.items()}
    cycles = []
    for start in graph:
        seen, stack = set(), [(start, (start,))]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join((*trail, nxt)))
                elif nxt not in seen and nxt > start:  # each cycle once, from its least module
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert cycles == []


def _modules_imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """The runnerd modules a file imports: `from runnerd.x import y` is the module x.y when y
    is one (x's `__init__` is then the package Python sets up, not an import of the file's
    own), else x."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
    return out
