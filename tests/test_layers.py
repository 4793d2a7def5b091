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
