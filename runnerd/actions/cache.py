"""The cache action: Mechanic's Redis-like commands, applied in the run's finishing transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runnerd import actions, errors, models
from runnerd.store import cache, db

#: command -> names of its positional arguments after the command itself.
COMMANDS: dict[str, tuple[str, ...]] = {
    "set": ("key", "value"),
    "setex": ("key", "ttl", "value"),
    "del": ("key",),
    "incr": ("key",),
    "incrby": ("key", "increment"),
    "decr": ("key",),
    "decrby": ("key", "decrement"),
}


def parse(options: Any) -> tuple[str, dict[str, Any]]:
    """Positional `["set", "k", "v"]` or verbose `{"set": {"key": "k", "value": "v"}}`."""
    if isinstance(options, list) and options and isinstance(options[0], str):
        command, args = options[0].lower(), options[1:]
        if command not in COMMANDS:
            raise errors.InvalidAction(f"cache: unknown command {options[0]!r}")
        names = COMMANDS[command]
        extra = ("ttl",) if command != "setex" else ()
        if not len(names) <= len(args) <= len(names) + len(extra):
            raise errors.InvalidAction(
                f"cache: {command} takes {', '.join(names)}; got {len(args)} argument(s)"
            )
        return command, dict(zip(names + extra, args, strict=False))
    if isinstance(options, dict) and len(options) == 1:
        command, args = next(iter(options.items()))
        command = str(command).lower()
        if command not in COMMANDS:
            raise errors.InvalidAction(f"cache: unknown command {command!r}")
        if not isinstance(args, dict):
            raise errors.InvalidAction(f"cache: {command} options must be an object")
        allowed = set(COMMANDS[command]) | {"ttl"}
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise errors.InvalidAction(
                f"cache: {command} does not take {', '.join(map(repr, unknown))}")
        missing = [n for n in COMMANDS[command] if n not in args]
        if missing:
            raise errors.InvalidAction(f"cache: {command} needs {', '.join(missing)}")
        return command, dict(args)
    raise errors.InvalidAction(
        'cache: expected ["command", args...] or {"command": {"key": ..., ...}}'
    )


def _int64(value: Any) -> bool:
    """A signed 64-bit integer: the counters' range, as in Redis (and SQLite's INTEGER)."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and -models.MAX_INT64 - 1 <= value <= models.MAX_INT64)


def _integer(value: Any, what: str) -> int:
    if not _int64(value):
        raise errors.InvalidAction(f"cache: {what} must be a 64-bit integer, got {value!r}")
    return int(value)


def check(options: Any) -> tuple[str, dict[str, Any]]:
    """Parse and validate everything that does not depend on stored data."""
    command, args = parse(options)
    cache.check_key(args["key"])
    args["ttl"] = cache.check_ttl(args.get("ttl"))
    if "value" in args:
        cache.encode_value(args["value"])
    for name in ("increment", "decrement"):
        if name in args:
            _integer(args[name], name)
    return command, args


def apply(tx: db.Tx, command: str, args: dict[str, Any], now: float) -> Any:
    """Run one command; the result is the key's new value (None after del).

    The counters (incr, incrby, decr, decrby) are one atomic statement (`cache.add`), so no
    increment is lost to a concurrent writer on any database."""
    return send(tx, command, args, now)()


def send(tx: db.Tx, command: str, args: dict[str, Any], now: float) -> Callable[[], Any]:
    """`apply` in two steps (`actions.Deferred.send`): the command is written now, a counter's
    new value read when the returned function is called. A refused command writes nothing."""
    key, ttl = args["key"], args["ttl"]
    if command == "del":
        cache.delete(tx, key)
        return lambda: None
    if command in ("set", "setex"):
        cache.put(tx, key, args["value"], ttl, now)
        return lambda: args["value"]
    increment = 1 if command == "incr" else args.get("increment", 0)
    decrement = 1 if command == "decr" else args.get("decrement", 0)
    added = cache.add(tx, key, increment, decrement, ttl, now)

    def value() -> int:
        new = added()
        if new is None:
            raise _refused(command, key, cache.get(tx, key, now))
        return new

    return value


def _refused(command: str, key: str, current: Any) -> errors.InvalidAction:
    """Why `cache.add` left the value under `key` unchanged."""
    if isinstance(current, bool) or not isinstance(current, int | None):
        return errors.InvalidAction(f"cache: {command} on {key!r}, which is not an integer")
    if current is not None and not _int64(current):
        return errors.InvalidAction(f"cache: {command} on {key!r}, whose value {current} is "
                                    "beyond a 64-bit integer")
    return errors.InvalidAction(f"cache: {command} on {key!r} would overflow a 64-bit "
                                "integer; the value is unchanged")


class CacheExecutor(actions.InProcess):
    """`cache`: set, setex, del, incr, incrby, decr, decrby; every command resets the TTL."""

    type = "cache"

    def validate(self, options: Any) -> None:
        """Raise InvalidAction for bad commands, keys, values or TTLs."""
        check(options)

    def perform_now(self, options: Any, ctx: actions.Context) -> actions.Deferred:
        """Apply the command in the transaction that finishes the run."""
        command, args = check(options)
        return actions.Deferred(lambda tx: apply(tx, command, args, ctx.now),
                                lambda tx: send(tx, command, args, ctx.now))
