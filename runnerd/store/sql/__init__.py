"""Every SQL statement runnerd runs, by name, and the numbered migrations.

`queries.sql` holds blocks that start with `-- name: NAME`, grouped by subject;
`migrations/NNNN_*.sql` are applied in order, and `schema.sql` is the schema they produce (a
snapshot for readers, checked by tests/test_store.py). A PostgreSQL backend would bring its own
files with the same names.
"""

from __future__ import annotations

import re
from pathlib import Path

_HERE = Path(__file__).parent
_NAME = re.compile(r"^-- name: ([a-z_0-9]+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """`-- name: x` blocks → {name: sql}."""
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


queries: dict[str, str] = parse_queries((_HERE / "queries.sql").read_text(encoding="utf-8"))


def migrations() -> list[tuple[int, str, str]]:
    """[(version, file name, sql)] in order."""
    out = []
    for file in sorted((_HERE / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        out.append((int(file.name[:4]), file.name, file.read_text(encoding="utf-8")))
    return out
