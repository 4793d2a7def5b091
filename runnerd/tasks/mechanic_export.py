"""`runnerd import FILE.json`: a Mechanic task export, checked and printed as a runnerd task."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from runnerd import config, errors
from runnerd.liquid import render
from runnerd.tasks import options, registry


class _Block(str):
    """A string YAML prints as a `|` block."""


def _block(dumper: yaml.SafeDumper, value: _Block) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


yaml.SafeDumper.add_representer(_Block, _block)


def load_export(file: str | Path) -> config.Task:
    """Read and convert an export; InvalidInput naming the file and the problem."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise errors.InvalidInput(f"{file}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise errors.InvalidInput(f"{file}: not JSON: {exc}") from None
    try:
        return config.task_from_export(data, source=str(file))
    except ValueError as exc:
        raise errors.InvalidInput(f"{file}: {exc}") from None


def check(task: config.Task) -> list[str]:
    """What would stop this task from loading: Liquid errors, unsupported topics, bad options."""
    renderer = render.Renderer()
    settings = config.Settings(path=Path("."), database=Path("unused.db"), tasks=(task,))
    try:
        registry.Registry(settings, renderer)
    except errors.ConfigError as exc:
        return exc.problems
    return []


def to_yaml(task: config.Task) -> str:
    """The `tasks:` entry of runnerd's configuration for `task`."""
    entry: dict[str, Any] = {"name": task.name}
    if not task.enabled:
        entry["enabled"] = False
    entry["subscriptions"] = _Block(task.subscriptions.strip() + "\n")
    if task.options:
        entry["options"] = dict(task.options)
    if task.preview_events:
        entry["preview_events"] = [dict(e) for e in task.preview_events]
    code = task.code if task.code.endswith("\n") else task.code + "\n"
    entry["code"] = _Block(code.replace("\r\n", "\n"))
    return yaml.safe_dump({"tasks": [entry]}, sort_keys=False, allow_unicode=True, width=100)


def unset_required(task: config.Task) -> list[str]:
    """The required options of `task` (given, or referenced by its code) that have no value."""
    values = dict(task.options)
    for key in registry.referenced_options(task.code, task.subscriptions):
        values.setdefault(key, None)
    return options.missing(values)


def export_to_yaml(file: str | Path) -> tuple[str, list[str]]:
    """Convert: the YAML and notes for the user. A task whose required options are empty (as
    Mechanic's library exports ship them) is converted disabled, the YAML saying which options
    to fill. InvalidInput listing every problem when the task could not run here."""
    task = load_export(file)
    unset = unset_required(task)
    if unset:
        task = dataclasses.replace(task, enabled=False,
                                   options={**{k: None for k in unset}, **task.options})
    problems = check(task)
    if problems:
        raise errors.InvalidInput("; ".join(problems))
    if not unset:
        return to_yaml(task), []
    note = (f"task {task.name!r} is disabled until its required options are filled: "
            f"{', '.join(unset)} (under options:, then set enabled: true)")
    return f"# {note}\n" + to_yaml(task), [f"{file}: {note}"]
