"""What every CLI command shares: the exit codes, usage errors, JSON output, progress lines, a
database for one command.

The package (`runnerd.cli`) imports `cli.monitoring` to register its commands; both import this
module, which imports neither, so there is no import cycle.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from runnerd import config, errors
from runnerd.store import backends, db

EXIT_FAIL = 1
#: A command used wrongly (a missing or extra argument, a malformed value), as argparse exits.
EXIT_USAGE = 2


class Usage(errors.InvalidInput):
    """The command line itself is wrong: exit EXIT_USAGE with one line and a pointer to --help."""


def progress(message: str) -> None:
    """A progress line on a long operation, on stderr when it is a terminal (never in a cron
    job's mail nor in --json output)."""
    if sys.stderr.isatty():
        print(f"runnerd: {message}", file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    """Print `value` as indented JSON, non-ASCII characters as they are."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def with_db(settings: config.Settings, fn: Callable[[db.Database], Awaitable[Any]]) -> Any:
    """Run `fn` on the database (closed afterwards) in a new event loop; its result.

    Only `runnerd run` creates and migrates the database: a missing, empty or older one is a
    DatabaseError saying so, never a new file left where the daemon would not look.
    """

    async def main() -> Any:
        database = await backends.open_database(settings.database, settings.database_url).open(
            create=False)
        try:
            await database.require_migrated()
            return await fn(database)
        finally:
            await database.close()

    return asyncio.run(main())
