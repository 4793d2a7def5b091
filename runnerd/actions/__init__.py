"""What every action executor offers, and the registry keyed by action type.

An executor is built once by the daemon with its own dependencies (settings section, the shared
HTTP session, ...). For each action object a task renders, `validate(options)` runs when the task
run finishes (an invalid action fails the *task run*, so a task never half-performs); later, the
action run calls `perform(options, ctx)`:

- it returns the run's result (any JSON value), or
- a `Deferred`, whose `apply(tx)` runs inside the transaction that finishes the run (database
  effects such as the cache and the Event action are then exactly-once with the run's success),
- or it raises `errors.ActionFailed(message, retryable=...)`: `retryable=True` for transient
  failures (connection refused/reset, timeout, SMTP 4xx, HTTP 5xx with error_on_5xx), which the
  worker retries 4 times; `retryable=False` fails the run at once.

Executors that do no I/O (cache, event, echo) are `InProcess`: their `perform_now` is called
synchronously in the transaction that finishes the task run, which stores their action runs
already performed (see `runs.Outcome.perform_inline`): no worker turn, no slot, one commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from runnerd import models

if TYPE_CHECKING:
    from runnerd.store import db


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What an action run knows when it is performed."""

    run: models.Run
    event: models.Event
    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class Deferred:
    """A write applied in the transaction that finishes the run; `apply` returns the result.

    `apply` may raise `errors.InvalidAction` or `errors.ActionFailed`: its writes are then rolled
    back and the run fails (never retried: the database said no).
    """

    apply: Callable[[db.Tx], Any]
    #: `apply` in two steps, when the action has them: `send(tx)` writes, and the function it
    #: returns gives the result (on PostgreSQL reading it is what waits, so a batch of them
    #: waits once). Both raise as `apply` does, but only before anything is written.
    send: Callable[[db.Tx], Callable[[], Any]] | None = None


class Executor(Protocol):
    """One action type."""

    type: str
    #: False for echo: its runs never emit mechanic/actions/perform.
    perform_event: bool
    #: True: `perform_now(options, ctx)` does the same as `perform` synchronously, without I/O.
    inline: bool

    def validate(self, options: Any) -> None:
        """Raise errors.InvalidAction naming what is wrong with `options`."""

    async def perform(self, options: Any, ctx: Context) -> Any:
        """Perform the action: a JSON result or a Deferred; ActionFailed on failure."""

    def redact(self, options: Any) -> Any:
        """`options` as shown to people and error events (secrets replaced)."""

    async def close(self) -> None:
        """Release what the executor holds (connections)."""


class Registry(dict[str, Executor]):
    """Executors by action type."""

    def __init__(self, executors: Mapping[str, Executor] | None = None) -> None:
        super().__init__(executors or {})

    def add(self, executor: Executor) -> None:
        """Register `executor` under its type."""
        self[executor.type] = executor

    def redact(self, action_type: str | None, options: Any) -> Any:
        """Options of an action run as they may be shown."""
        executor = self.get(action_type or "")
        return options if executor is None else executor.redact(options)

    async def close(self) -> None:
        """Close every executor."""
        for executor in self.values():
            await executor.close()


class Simple:
    """Defaults for executors that hold nothing and have no secrets."""

    perform_event = True
    inline = False

    def redact(self, options: Any) -> Any:
        """Nothing to hide."""
        return options

    async def close(self) -> None:
        """Nothing to release."""


class InProcess(Simple):
    """An executor without I/O: performed synchronously where its run is stored."""

    inline = True

    def perform_now(self, options: Any, ctx: Context) -> Any:
        """What `perform` returns (a result or a Deferred), synchronously."""
        raise NotImplementedError

    async def perform(self, options: Any, ctx: Context) -> Any:
        """The same as `perform_now` (a retried run is performed by the worker)."""
        return self.perform_now(options, ctx)
