"""The database a configuration names: the SQLite file (`store.db`) or a PostgreSQL server
(`store.pg`, imported only for a URL, so SQLite users never load psycopg).

This module chooses; `db` and `pg` do not know of it, so the imports run one way:
backends -> pg -> db.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from runnerd.store import db

if TYPE_CHECKING:
    from runnerd.store import pg


def open_database(path: Path, url: str | None) -> db.Database:
    """The database configured: the SQLite file at `path`, or the PostgreSQL server at `url`
    (psycopg is imported only then)."""
    if url is None:
        return db.Database(path)
    from runnerd.store import pg  # only a PostgreSQL user needs psycopg
    return pg.PgDatabase(url)


def lock_database(path: Path, url: str | None,
                  node: str) -> contextlib.AbstractContextManager[pg.NameLock | None]:
    """The daemon's hold on its database: the SQLite file's `lock` (one daemon per file: never
    lost, so None), or on a URL `pg.lock` on the node's name (one live node per name: the
    `NameLock`, to be kept while the node runs)."""
    if url is None:
        return db.lock(path)
    from runnerd.store import pg  # see open_database
    return pg.lock(url, node)
