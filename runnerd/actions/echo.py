"""The echo action: returns its options; `__error` forces a failure."""

from __future__ import annotations

from typing import Any

from runnerd import actions, errors


class EchoExecutor(actions.InProcess):
    """`echo`: no side effects; never emits mechanic/actions/perform."""

    type = "echo"
    perform_event = False

    def validate(self, options: Any) -> None:
        """Echo takes anything."""

    def perform_now(self, options: Any, ctx: actions.Context) -> Any:
        """Return the options, or fail with `__error`."""
        if isinstance(options, dict) and options.get("__error"):
            raise errors.ActionFailed(str(options["__error"]))
        return options
