"""Configuration: every problem reported at once, each line naming its key path."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from runnerd import config, errors


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Settings:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return config.load(path, env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(errors.ConfigError) as info:
        load(tmp_path, text, env)
    return info.value.problems


def test_example_config_loads(example_config: Path) -> None:
    settings = config.load(example_config, {})
    assert settings.database.parent == example_config.parent  # relative to the file


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, "database: x.db\n")
    assert s.database == tmp_path / "x.db"
    assert (s.listen.host, s.listen.port, s.listen.max_body_bytes) == ("127.0.0.1", 8787, 1048576)
    assert s.listen.max_due_runs == 100_000
    assert (s.concurrency, s.retention_days, s.retention_days_failed) == (8, 15, 90)
    assert s.admin_token is None and s.timezone == "UTC"


def _fields_at_default(value: object) -> list[str]:
    """The fields of the dataclass `value` that differ (in value or type) from their defaults;
    nested sections (`email.smtp`) are compared field by field."""
    out = []
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            continue  # required: no default to drift from
        default = (field.default_factory() if field.default is dataclasses.MISSING
                   else field.default)
        got = getattr(value, field.name)
        if dataclasses.is_dataclass(default):
            out += [f"{field.name}.{x}" for x in _fields_at_default(got)]
        elif (got, type(got)) != (default, type(default)):
            out.append(field.name)
    return out


def test_an_absent_key_reads_as_its_dataclass_default(tmp_path: Path) -> None:
    """Defaults are written once, on the dataclasses: a reader that kept a copy of its own would
    drift from them. Every section and every kind of list entry, with only its required keys."""
    s = load(tmp_path, """\
        database: x.db
        webhooks: [{name: w, topic: user/a/b}]
        monitors: [{name: m, period: 1h}]
        tasks: [{name: t, code: ""}]
        """)
    assert _fields_at_default(s) == ["webhooks", "monitors", "tasks"]  # given above
    assert _fields_at_default(s.webhooks[0]) == []
    assert _fields_at_default(s.monitors[0]) == ["period"]  # given: one of period or schedule
    assert _fields_at_default(s.tasks[0]) == ["source", "id"]  # set by the reader, not keys


def test_every_problem_is_listed_with_its_key_path(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        database: x.db
        concurrency: "eight"
        timezone: Mars/Olympus
        listen: {host: 127.0.0.1, port: 99999, colour: blue, max_due_runs: 0}
        email: {transport: pigeon, smtp: {starttls: sometimes}}
        webhooks:
          - {name: orders, topic: shopify/orders/create}
          - {name: orders, topic: user/orders/paid, mode: half}
        tasks:
          - {name: A, code: "x"}
          - {name: A, code: "y"}
          - {name: B}
        bogus: 1
    """)
    text = "\n".join(found)
    for expected in [
        "concurrency: expected an integer, got 'eight'",
        "timezone: unknown timezone 'Mars/Olympus'",
        "listen.port: expected a port from 0 to 65535, got 99999",
        "listen.colour: unknown key",
        "listen.max_due_runs: must be greater than 0, got 0",
        "email.transport: expected one of smtp, outbox, got 'pigeon'",
        "email.smtp.starttls: expected one of auto, always, never",
        "webhooks[0].topic: bad topic 'shopify/orders/create'",
        "webhooks[1].mode: expected one of auto, full",
        "webhooks[1].name: duplicate webhook name 'orders'",
        "tasks[1].name: duplicate task name 'A'",
        "tasks[2]: task 'B' needs exactly one of code or code_file",
        "bogus: unknown key",
    ]:
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_http_targets(tmp_path: Path) -> None:
    s = load(tmp_path, """
        database: x.db
        http: {allow: ["127.0.0.1:6379", "*.corp.example"], deny: [10.0.0.0/8, "::1"]}
    """)
    assert [e.text for e in s.http.allow] == ["127.0.0.1:6379", "*.corp.example"]
    assert [str(e.network) for e in s.http.deny] == ["10.0.0.0/8", "::1/128"]
    assert problems(tmp_path, """
        database: x.db
        http: {allow: ["10.0.0.1/8", 7], deny: "10.0.0.0/8"}
    """) == [
        "http.allow[0]: '10.0.0.1/8': 10.0.0.1/8 has host bits set",
        "http.allow[1]: expected a string, got an integer",
        "http.deny: expected a list, got '10.0.0.0/8'",
    ]


def test_env_substitution(tmp_path: Path) -> None:
    s = load(tmp_path, "database: x.db\nadmin_token: ${TOKEN}\n", {"TOKEN": "s3cret"})
    assert s.admin_token == "s3cret"
    assert problems(tmp_path, "database: x.db\nadmin_token: ${NOPE}\n") == [
        "admin_token: environment variable NOPE is not set"]


def test_code_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.liquid").write_text("{% log 'hi' %}")
    s = load(tmp_path, "database: x.db\ntasks: [{name: T, code_file: tasks/t.liquid}]\n")
    assert s.tasks[0].code == "{% log 'hi' %}"
    found = problems(tmp_path, "database: x.db\ntasks: [{name: T, code_file: nope.liquid}]\n")
    assert found[0].startswith("tasks[0].code_file: cannot read")


def test_monitors(tmp_path: Path) -> None:
    s = load(tmp_path, """
        database: x.db
        tasks: [{name: T, code: ""}]
        monitors:
          - {name: backup, period: 1d, grace: 1h}
          - {task: T, schedule: "0 3 * * *", grace: 5m}
    """)
    assert s.monitors[0].period == 86400 and s.monitors[0].grace == 3600
    assert s.monitors[1].name == "T" and s.monitors[1].schedule == "0 3 * * *"
    found = "\n".join(problems(tmp_path, """
        database: x.db
        monitors:
          - {name: a, grace: 1h}
          - {task: Nope, period: 10m}
          - {name: b, period: soon}
    """))
    assert "monitors[0]: needs exactly one of period or schedule" in found
    assert "monitors[1].task: no task named 'Nope'" in found
    assert "monitors[2].period: expected a duration" in found


def test_flap_damping_rate_limits_and_ping_keys(tmp_path: Path) -> None:
    s = load(tmp_path, "database: x.db\nmonitors: [{name: b, period: 1h}]\n")
    assert (s.monitoring.alert_interval, s.monitoring.ping_rate,
            s.monitoring.ping_rate_per_client) == (600, 30, 300)
    assert s.monitors[0].ping_key is None
    s = load(tmp_path, """
        database: x.db
        monitoring: {alert_interval: 0, ping_rate: 0, ping_rate_per_client: 5}
        monitors: [{name: b, period: 1h, ping_key: "${KEY}"}]
    """, {"KEY": "k-123"})
    assert (s.monitoring.alert_interval, s.monitoring.ping_rate,
            s.monitoring.ping_rate_per_client) == (0, 0, 5)
    assert s.monitors[0].ping_key == "k-123" and "k-123" not in repr(s)
    assert problems(tmp_path, """
        database: x.db
        monitoring: {alert_interval: soon, ping_rate: -1, ping_rate_per_client: many}
        tasks: [{name: T, code: ""}]
        monitors:
          - {name: b, period: 1h, ping_key: "${EMPTY}"}
          - {task: T, period: 1h, ping_key: k}
    """, {"EMPTY": ""}) == [
        "monitoring.alert_interval: expected a duration like 30s, 10m, 2h, 1d, got 'soon'",
        "monitoring.ping_rate: must be 0 (no limit) or more, got -1",
        "monitoring.ping_rate_per_client: expected an integer, got 'many'",
        "monitors[0].ping_key: empty: remove the key for a monitor anyone may ping",
        "monitors[1].ping_key: only for ping monitors (name:): a task monitor is fed by its "
        "task's runs"]


def test_not_yaml(tmp_path: Path) -> None:
    found = problems(tmp_path, "database: [x\n")
    assert len(found) == 1 and "not valid YAML" in found[0]


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path: Path) -> None:
    """The loader is a safe one (libyaml's when PyYAML has it): a config never runs code."""
    marker = tmp_path / "ran"
    found = problems(tmp_path, f"database: !!python/object/apply:os.system ['touch {marker}']\n")
    assert len(found) == 1 and "not valid YAML" in found[0]
    assert not marker.exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read the configuration"):
        config.load(tmp_path / "absent.yaml", {})


def test_task_export(tmp_path: Path) -> None:
    task = config.task_from_export({
        "name": "Hello", "script": "{% log 'hi' %}",
        "subscriptions": ["mechanic/user/trigger"], "options": {"a": 1},
    }, source="x.json")
    assert task.subscriptions == "mechanic/user/trigger" and task.options == {"a": 1}
    with pytest.raises(ValueError, match="not supported: online_store_javascript"):
        config.task_from_export({"name": "x", "script": "y",
                                 "online_store_javascript": "alert(1)"}, source="x")


def test_reload_names_the_changes_that_need_a_restart(tmp_path: Path) -> None:
    from runnerd import daemon

    path = tmp_path / "c.yaml"
    path.write_text("database: a.db\nconcurrency: 8\ntasks: []\n")
    old = config.load(str(path), {})
    path.write_text("database: a.db\nconcurrency: 4\nlisten: {port: 9999}\ntasks: []\n")
    new = config.load(str(path), {})
    assert daemon.restart_only_changes(old, new) == ["listen", "concurrency"]
    assert daemon.restart_only_changes(old, old) == []


def test_memory_settled_at_start_is_collected_after_a_reload() -> None:
    """The start freezes what is alive; a reload must unfreeze it, or replaced tasks that hold
    reference cycles would never be freed."""
    import gc
    import weakref

    from runnerd import daemon

    class Node:
        pass

    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    collected = []
    weakref.finalize(cycle, collected.append, True)
    try:
        daemon._settle_memory()  # as at start-up: the cycle is alive, so it is frozen
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect()
        assert collected == []  # frozen: a full collection leaves it alone
        daemon._settle_memory()  # as at a reload
        assert collected == [True]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_node_name_and_timeout(tmp_path: Path) -> None:
    import socket
    s = load(tmp_path, "database: x.db\n")
    assert (s.node_name, s.node, s.node_timeout) == (None, socket.gethostname(), 30)
    s = load(tmp_path, "database: x.db\nnode_name: web-1.eu\nnode_timeout: 1m\n")
    assert (s.node, s.node_timeout) == ("web-1.eu", 60)
    assert problems(tmp_path, "database: x.db\nnode_name: 'a b'\nnode_timeout: 2s\n") == [
        "node_name: not a node name: 'a b' (1 to 63 letters, digits, '.', '_', ':' or '-', "
        "starting with a letter or digit)",
        "node_timeout: must be at least 3s"]
