"""The exception tree of runnerd; each class's docstring is its default message.

    RunnerdError
    ├── ConfigError            bad configuration (one or more lines, each naming a key path)
    ├── DatabaseError          the database cannot be opened, locked or written
    │   └── AlreadyRunning     another daemon holds the database's lock file
    ├── NotFound               no such run, task, webhook or monitor
    ├── InvalidInput           a bad argument from the command line or the HTTP API
    ├── RenderError            a task's Liquid failed at render time (or hit a limit)
    ├── InvalidAction          an action object's type or options are invalid (fails the task run)
    └── ActionFailed           performing an action failed; `retryable` says if it is transient
"""

from __future__ import annotations


class RunnerdError(Exception):
    """runnerd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)

    @property
    def message(self) -> str:
        """The error's one-line message."""
        return str(self.args[0])


class ConfigError(RunnerdError):
    """The configuration is invalid."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DatabaseError(RunnerdError):
    """The database is unavailable."""


class AlreadyRunning(DatabaseError):
    """Another runnerd daemon is using this database."""


class NotFound(RunnerdError):
    """Not found."""


class InvalidInput(RunnerdError):
    """Invalid input."""


class RenderError(RunnerdError):
    """The task's Liquid failed to render."""


class InvalidAction(RunnerdError):
    """The action is invalid."""


class ActionFailed(RunnerdError):
    """The action failed."""

    def __init__(self, message: str | None = None, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
