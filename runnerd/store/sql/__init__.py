"""Every SQL statement runnerd runs, by name, and the numbered migrations.

`queries.sql` holds blocks that start with `-- name: NAME`, grouped by subject;
`migrations/NNNN_*.sql` are applied in order, and `schema.sql` is the schema they produce (a
snapshot for readers, checked by tests/test_store.py).

PostgreSQL (`store.pg`) runs the same `queries.sql`: a statement written in the SQL both engines
speak is written once. Where PostgreSQL needs other words (json_each, typeof, rowid, a NULL
parameter's type, SUM of a comparison…), `postgres/queries.sql` holds a block with the same
name that replaces it there; tests/test_postgres.py runs every name on both engines. Parameters
stay `:name` in both files and become psycopg's `%(name)s` when loaded. PostgreSQL has its own
migrations (`postgres/migrations/`) numbered like SQLite's: version N is the same schema on both
engines (the same tables, columns and views), a PostgreSQL file may take several SQLite steps at
once, and a new SQLite migration needs its PostgreSQL counterpart.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

_HERE = Path(__file__).parent
_NAME = re.compile(r"^-- name: ([a-z_0-9]+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """`-- name: x` blocks → {name: sql}."""
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


queries: dict[str, str] = parse_queries((_HERE / "queries.sql").read_text(encoding="utf-8"))
_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z_0-9]*)")


@functools.cache
def pg_queries() -> dict[str, str]:
    """The statements PostgreSQL runs: `queries` with `postgres/queries.sql`'s blocks in place
    of theirs, parameters in psycopg's `%(name)s` style (a literal % doubled)."""
    own = parse_queries((_HERE / "postgres" / "queries.sql").read_text(encoding="utf-8"))
    unknown = own.keys() - queries.keys()
    assert not unknown, f"postgres/queries.sql: no such query in queries.sql: {unknown}"
    return {name: _PARAM.sub(r"%(\1)s", own.get(name, text).replace("%", "%%"))
            for name, text in queries.items()}


def migrations(engine: str = "") -> list[tuple[int, str, str]]:
    """[(version, file name, sql)] in order: SQLite's, or `engine`'s ("postgres")."""
    out = []
    for file in sorted((_HERE / engine / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        out.append((int(file.name[:4]), file.name, file.read_text(encoding="utf-8")))
    return out
