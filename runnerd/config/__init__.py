"""The YAML configuration: one frozen dataclass per section, validated at load.

`load(path, environ)` reads the file, substitutes `${VAR}` from `environ`, checks every key and
raises one `ConfigError` listing every problem, each naming its key path. Liquid is compiled
elsewhere (`registry`), so this module stays free of the template engine. Beside it, the pure
vocabularies a configuration is written in: `durations`, `cron` (monitor schedules) and
`targets` (`http.allow`/`http.deny` entries); `yamlread` collects the problems.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import socket
import uuid
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from runnerd import errors
from runnerd.config import targets, yamlread
from runnerd.store import db

#: task.id is uuid5(TASK_NAMESPACE, name): stable across restarts and machines.
TASK_NAMESPACE = uuid.UUID("6f1d3c52-6d0a-4f6e-9a53-2b7c5e4a9d10")

# \Z, not $: a $ also matches before a trailing newline, so "user/a/b\n" would pass.
USER_TOPIC = re.compile(r"^user/[a-z0-9_\-.]+/[a-z0-9_\-.]+\Z")
TOPIC = re.compile(r"^[a-z0-9_\-.]+/[a-z0-9_\-.]+/[a-z0-9_\-.]+\Z")
NAME = re.compile(r"^[A-Za-z0-9_\-.]+\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    """`listen:` where the HTTP listener binds."""

    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 1_048_576
    #: a request's headers must be complete this long after its first byte, or the connection
    #: is closed (slow-loris)
    header_timeout: float = 10.0
    #: a request body (webhook, ping, API) must arrive within this, or 408 and nothing stored
    body_timeout: float = 30.0
    #: a connection with no request under way (idle keep-alive, or silent since it opened)
    #: is closed after this
    keepalive_timeout: float = 15.0
    #: back-pressure: while more task runs than this wait to be rendered, webhooks get 503 with
    #: Retry-After (a burst is taken and rendered after; only a backlog this deep refuses)
    max_due_runs: int = 100_000


@dataclasses.dataclass(frozen=True, slots=True)
class Smtp:
    """`email.smtp:` the mail relay."""

    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    starttls: str = "auto"  # auto | always | never
    tls: bool = False  # implicit TLS (port 465)
    verify: bool = True  # verify the server's certificate
    timeout: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Email:
    """`email:` how the email action delivers."""

    transport: str = "smtp"  # smtp | outbox
    sender: str = "runnerd@localhost"  # the `from` key
    smtp: Smtp = Smtp()


@dataclasses.dataclass(frozen=True, slots=True)
class Http:
    """`http:` defaults of the http action, and where it may connect (`targets`)."""

    timeout: float = 30.0
    max_response_bytes: int = 1_048_576
    allow: tuple[targets.Entry, ...] = ()
    deny: tuple[targets.Entry, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """`limits:` caps on one task render, so a bad task cannot take the daemon down."""

    loop_iterations: int = 100_000
    output_bytes: int = 1_048_576
    render_seconds: float = 5.0
    nesting: int = 30


@dataclasses.dataclass(frozen=True, slots=True)
class Monitoring:
    """`monitoring:` where alerts go, how often, and how many pings are taken."""

    mail_recipients: tuple[str, ...] = ()
    #: at most one alert (email and event) per monitor per this many seconds; 0: every change
    alert_interval: float = 600.0
    #: pings per minute one monitor takes, and one client address sends (0: no limit)
    ping_rate: int = 30
    ping_rate_per_client: int = 300
    #: the most of a ping's body kept (bytes), and the pings kept per monitor
    ping_body_limit: int = 10_240
    ping_history: int = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Webhook:
    """One entry of `webhooks:`: POST /webhooks/{name} creates an event on `topic`."""

    name: str
    topic: str
    mode: str = "auto"  # auto | full
    secret: str | None = dataclasses.field(default=None, repr=False)
    #: how far `X-Runnerd-Timestamp` may be from now (seconds), when a signed request sends it
    tolerance: float = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class Monitor:
    """One entry of `monitors:`: a dead man's switch for pings (`name`) or a task (`task`)."""

    name: str
    grace: float = 3600.0
    period: float | None = None
    schedule: str | None = None
    task: str | None = None
    #: when set, a ping must carry it (`?key=` or X-Runnerd-Ping-Key)
    ping_key: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    """One entry of `event_filters:`: Liquid rendered for each event before it reaches any task;
    the output `false` skips the event (Mechanic's event filters)."""

    name: str
    code: str
    source: str = ""  # "event_filters[0]", for messages


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """One task: Liquid code subscribed to topics (subscriptions are rendered by `registry`)."""

    name: str
    code: str
    subscriptions: str = ""  # the template: one per line, optional +N.unit offsets
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    enabled: bool = True
    preview_events: tuple[Mapping[str, Any], ...] = ()
    source: str = ""  # where it was defined, for messages: "tasks[0]" or a file path
    #: loaded from a Mechanic export in tasks_dir: empty required options disable it (as the
    #: library ships them), instead of refusing the whole configuration
    from_tasks_dir: bool = False
    #: a stable UUID derived from the name (computed once: it is read on every run)
    id: str = dataclasses.field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", str(uuid.uuid5(TASK_NAMESPACE, self.name)))


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration file."""

    path: Path
    database: Path
    #: `database:` as a PostgreSQL URL (then `database` is unused); None: the SQLite file
    database_url: str | None = dataclasses.field(default=None, repr=False)
    timezone: str = "UTC"
    listen: Listen = Listen()
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    concurrency: int = 8
    retention_days: float = 15.0
    retention_days_failed: float = 90.0
    shutdown_grace: float = 20.0
    #: this process's name among the nodes sharing a PostgreSQL database (§14); None: the host
    #: name. Ignored on SQLite.
    node_name: str | None = None
    #: a node whose heartbeat is older than this is dead: its started runs go back to due (§14)
    node_timeout: float = 30.0
    email: Email = Email()
    http: Http = Http()
    limits: Limits = Limits()
    monitoring: Monitoring = Monitoring()
    webhooks: tuple[Webhook, ...] = ()
    monitors: tuple[Monitor, ...] = ()
    event_filters: tuple[EventFilter, ...] = ()
    tasks: tuple[Task, ...] = ()
    tasks_dir: Path | None = None

    @property
    def database_name(self) -> str:
        """The database for messages: the SQLite file, or the URL without its password."""
        return str(self.database) if self.database_url is None else db.redact(self.database_url)

    @property
    def node(self) -> str:
        """This node's name: `node_name`, or the host name."""
        return self.node_name or socket.gethostname()

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The configured timezone."""
        return zoneinfo.ZoneInfo(self.timezone)

    def webhook(self, name: str) -> Webhook | None:
        """The webhook called `name`, if configured."""
        return next((w for w in self.webhooks if w.name == name), None)


def _default(cls: type, name: str) -> Any:
    """The default of field `name` of the dataclass `cls`: every default is written once, there.

    A field with a `default_factory` gets a fresh value from it. (A reader's `None` for a key
    without a default means "absent", not a default.)
    """
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _timezone(value: Any) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
        return f"unknown timezone {value!r} (expected an IANA name such as UTC or Europe/Paris)"
    return None


def _node_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}", value):
        return (f"not a node name: {value!r} (1 to 63 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit)")
    return None


def load(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Settings:
    """Read and validate the configuration file; raise ConfigError listing every problem."""
    settings, problems = parse(path, environ)
    if problems:
        raise errors.ConfigError(problems)
    return settings


#: libyaml's safe loader when PyYAML has it (60 ms → 4 ms for a file of 100 tasks), else PyYAML's.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse(path: str | os.PathLike[str], environ: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """Read the file; return the settings (defaults where a key was bad) and every problem.

    ConfigError only when the file cannot be read or is not YAML at all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        raw = yaml.load(text, Loader=_LOADER)  # a safe loader (_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        why = getattr(exc, "problem", None) or str(exc)  # str(exc) quotes the text over lines
        raise errors.ConfigError(f"{path}: not valid YAML{where}: {' '.join(why.split())}"
                                 ) from exc
    except Exception as exc:  # PyYAML's constructors fail in their own ways: `!!timestamp x`
        raise errors.ConfigError(f"{path}: not valid YAML: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]}") from exc
    reader = yamlread.Reader()
    raw = yamlread.substitute(raw, "", environ, reader)
    return _settings(raw, path.resolve(), reader), reader.problems


_POSTGRES_URL = re.compile(r"postgres(ql)?://")
_TOP = {"database", "timezone", "listen", "admin_token", "concurrency", "retention_days",
        "retention_days_failed", "shutdown_grace", "node_name", "node_timeout", "email", "http", "limits", "monitoring",
        "webhooks", "monitors", "event_filters", "tasks", "tasks_dir"}


def _settings(raw: Any, path: Path, r: yamlread.Reader) -> Settings:
    top = r.section(raw, "", _TOP)
    base = path.parent
    database = r.get(top, "", "database", str, None)
    if database is None:
        r.problem("database", "required: the path of the SQLite file, or a postgresql:// URL")
    url = database if database and _POSTGRES_URL.match(database) else None
    if url is not None and importlib.util.find_spec("psycopg") is None:
        r.problem("database", "a PostgreSQL URL needs psycopg: install runnerd[postgres] "
                  "(pip install 'runnerd[postgres]')")
    tasks_dir = r.get(top, "", "tasks_dir", str, None)
    tasks = _tasks(top.get("tasks"), base, r)
    if tasks_dir is not None:
        tasks_dir_path = base / tasks_dir
        if not tasks_dir_path.is_dir():
            r.problem("tasks_dir", f"not a directory: {tasks_dir_path}")
        else:
            tasks += _exports(tasks_dir_path, r)
    yamlread.unique([t.name for t in tasks], "tasks", "task name", r)
    settings = Settings(
        path=path,
        database=base / (database if database and url is None else "runnerd.db"),
        database_url=url,
        timezone=r.get(top, "", "timezone", str, _default(Settings, "timezone"), _timezone),
        listen=_listen(top.get("listen"), r),
        admin_token=r.get(top, "", "admin_token", str, None) or None,
        concurrency=r.get(top, "", "concurrency", int, _default(Settings, "concurrency"),
                          yamlread.positive),
        **{key: r.get(top, "", key, float, _default(Settings, key), yamlread.positive)
           for key in ("retention_days", "retention_days_failed")},
        shutdown_grace=r.duration(top, "", "shutdown_grace", _default(Settings, "shutdown_grace")),
        node_name=r.get(top, "", "node_name", str, None, _node_name),
        node_timeout=r.duration(top, "", "node_timeout", _default(Settings, "node_timeout"),
                                lambda v: None if v >= 3 else "must be at least 3s"),
        email=_email(top.get("email"), r),
        http=_http(top.get("http"), r),
        limits=_limits(top.get("limits"), r),
        monitoring=_monitoring(top.get("monitoring"), r),
        webhooks=_webhooks(top.get("webhooks"), r),
        monitors=_monitors(top.get("monitors"), {t.name for t in tasks}, r),
        event_filters=_event_filters(top.get("event_filters"), r),
        tasks=tuple(tasks),
        tasks_dir=base / tasks_dir if tasks_dir else None,
    )
    return settings


def _listen(raw: Any, r: yamlread.Reader) -> Listen:
    timeouts = ("header_timeout", "body_timeout", "keepalive_timeout")
    s = r.section(raw, "listen", {"host", "port", "max_body_bytes", "max_due_runs", *timeouts})
    return Listen(
        host=r.get(s, "listen", "host", str, _default(Listen, "host")),
        port=r.get(s, "listen", "port", int, _default(Listen, "port"), _port),
        max_body_bytes=r.get(s, "listen", "max_body_bytes", int,
                             _default(Listen, "max_body_bytes"), yamlread.positive),
        max_due_runs=r.get(s, "listen", "max_due_runs", int, _default(Listen, "max_due_runs"),
                           yamlread.positive),
        **{key: r.duration(s, "listen", key, _default(Listen, key), _finite_positive)
           for key in timeouts},
    )


def _finite_positive(value: float) -> str | None:
    return None if 0 < value < math.inf else f"expected a duration greater than 0, got {value!r}"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else f"expected a port from 0 to 65535, got {value}"


def _email(raw: Any, r: yamlread.Reader) -> Email:
    s = r.section(raw, "email", {"transport", "from", "smtp"})
    m = r.section(s.get("smtp"), "email.smtp", {"host", "port", "username", "password",
                                                  "starttls", "tls", "verify", "timeout"})
    p = "email.smtp"
    smtp = Smtp(
        host=r.get(m, p, "host", str, _default(Smtp, "host")),
        port=r.get(m, p, "port", int, _default(Smtp, "port"), _port),
        username=r.get(m, p, "username", str, _default(Smtp, "username")),
        password=r.get(m, p, "password", str, _default(Smtp, "password")),
        starttls=r.get(m, p, "starttls", str, _default(Smtp, "starttls"),
                       yamlread.one_of("auto", "always", "never")),
        tls=r.get(m, p, "tls", bool, _default(Smtp, "tls")),
        verify=r.get(m, p, "verify", bool, _default(Smtp, "verify")),
        timeout=r.duration(m, p, "timeout", _default(Smtp, "timeout")),
    )
    return Email(
        transport=r.get(s, "email", "transport", str, _default(Email, "transport"),
                        yamlread.one_of("smtp", "outbox")),
        sender=r.get(s, "email", "from", str, _default(Email, "sender")),
        smtp=smtp,
    )


def _http(raw: Any, r: yamlread.Reader) -> Http:
    s = r.section(raw, "http", {"timeout", "max_response_bytes", "allow", "deny"})
    return Http(
        timeout=r.duration(s, "http", "timeout", _default(Http, "timeout")),
        max_response_bytes=r.get(s, "http", "max_response_bytes", int,
                                 _default(Http, "max_response_bytes"), yamlread.positive),
        allow=_targets(s, "allow", r),
        deny=_targets(s, "deny", r),
    )


def _targets(s: dict[str, Any], key: str, r: yamlread.Reader) -> tuple[targets.Entry, ...]:
    """`http.allow` or `http.deny`: addresses, networks and host names (`targets.parse`)."""
    out = []
    for i, item in enumerate(r.get(s, "http", key, list, _default(Http, key))):
        path = f"http.{key}[{i}]"
        if not isinstance(item, str):
            r.problem(path, f"expected a string, got {yamlread.describe(item)}")
            continue
        try:
            out.append(targets.parse(item))
        except ValueError as exc:
            r.problem(path, str(exc))
    return tuple(out)


def _limits(raw: Any, r: yamlread.Reader) -> Limits:
    s = r.section(raw, "limits", {"loop_iterations", "output_bytes", "render_seconds", "nesting"})
    return Limits(
        **{key: r.get(s, "limits", key, int, _default(Limits, key), yamlread.positive)
           for key in ("loop_iterations", "output_bytes", "nesting")},
        render_seconds=r.duration(s, "limits", "render_seconds",
                                  _default(Limits, "render_seconds")),
    )


def _monitoring(raw: Any, r: yamlread.Reader) -> Monitoring:
    s = r.section(raw, "monitoring", {"mail_recipients", "alert_interval", "ping_rate",
                                      "ping_rate_per_client", "ping_body_limit",
                                      "ping_history"})
    recipients = r.get(s, "monitoring", "mail_recipients", (list, str),
                       _default(Monitoring, "mail_recipients"))
    if isinstance(recipients, str):
        recipients = [x.strip() for x in recipients.split(",") if x.strip()]
    for i, item in enumerate(recipients):
        if not isinstance(item, str) or "@" not in item:
            r.problem(f"monitoring.mail_recipients[{i}]",
                      f"expected an email address, got {item!r}")
    return Monitoring(
        mail_recipients=tuple(str(x) for x in recipients),
        alert_interval=r.duration(s, "monitoring", "alert_interval",
                                  _default(Monitoring, "alert_interval")),
        **{key: r.get(s, "monitoring", key, int, _default(Monitoring, key), _not_negative)
           for key in ("ping_rate", "ping_rate_per_client", "ping_body_limit")},
        ping_history=r.get(s, "monitoring", "ping_history", int,
                           _default(Monitoring, "ping_history"), yamlread.positive),
    )


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be 0 (no limit) or more, got {value!r}"


def _webhooks(raw: Any, r: yamlread.Reader) -> tuple[Webhook, ...]:
    out = []
    items = yamlread.items(raw, "webhooks", r)
    yamlread.unique([str(item.get("name")) for _, item in items], "webhooks", "webhook name", r)
    for p, item in items:
        s = r.section(item, p, {"name", "topic", "mode", "secret", "tolerance"})
        name = r.get(s, p, "name", str, None, _name_check)
        topic = r.get(s, p, "topic", str, None, _user_topic)
        if name is None or topic is None:
            if "name" not in s or "topic" not in s:
                r.problem(p, "needs a name and a topic")
            continue
        out.append(Webhook(
            name=name, topic=topic,
            mode=r.get(s, p, "mode", str, _default(Webhook, "mode"),
                       yamlread.one_of("auto", "full")),
            secret=r.get(s, p, "secret", str, _default(Webhook, "secret"),
                         _secret("a webhook without a signature")),
            tolerance=r.duration(s, p, "tolerance", _default(Webhook, "tolerance")),
        ))
    return tuple(out)


def _secret(without: str) -> Callable[[Any], str | None]:
    """A check: not empty (`secret: ${VAR}` with VAR set but empty must not quietly accept
    every request); the message names what removing the key gives: `without`."""
    def check(value: Any) -> str | None:
        return None if value else f"empty: remove the key for {without}"

    return check


def _name_check(value: Any) -> str | None:
    return None if NAME.match(value) else (
        f"bad name {value!r}: use letters, digits, '_', '-' and '.'")


def _user_topic(value: Any) -> str | None:
    return None if USER_TOPIC.match(value) else (
        f"bad topic {value!r}: expected user/<subject>/<verb> (lower case)")


def _monitors(raw: Any, task_names: set[str], r: yamlread.Reader) -> tuple[Monitor, ...]:
    out = []
    for p, item in yamlread.items(raw, "monitors", r):
        s = r.section(item, p, {"name", "task", "period", "schedule", "grace", "ping_key"})
        task = r.get(s, p, "task", str, None)
        name = r.get(s, p, "name", str, None, _name_check)
        if task is not None and task not in task_names:
            r.problem(f"{p}.task", f"no task named {task!r} in this configuration")
        if (name is None) == (task is None):
            r.problem(p, "needs exactly one of name (pinged by an external job) or task")
            continue
        period = r.duration(s, p, "period", None)
        schedule = r.get(s, p, "schedule", str, None, _cron_check)
        bad_schedule = schedule is None and "schedule" in s  # reported by _cron_check
        if (period is None) == (schedule is None) and not bad_schedule:
            r.problem(p, "needs exactly one of period or schedule")
        ping_key = r.get(s, p, "ping_key", str, None, _secret("a monitor anyone may ping"))
        if ping_key is not None and task is not None:
            r.problem(f"{p}.ping_key", "only for ping monitors (name:): a task monitor is fed "
                                       "by its task's runs")
        out.append(Monitor(name=name or str(task), task=task, period=period, schedule=schedule,
                           grace=r.duration(s, p, "grace", _default(Monitor, "grace")),
                           ping_key=ping_key))
    yamlread.unique([m.name for m in out], "monitors", "monitor name", r)
    return tuple(out)


def _cron_check(value: Any) -> str | None:
    # stdlib only; imported here as config is imported by everything
    from runnerd.config import cron

    try:
        cron.parse(value)
    except ValueError as exc:
        return str(exc)
    return None


def _event_filters(raw: Any, r: yamlread.Reader) -> tuple[EventFilter, ...]:
    """`event_filters:`; their Liquid is compiled with the tasks' (`tasks.registry`)."""
    out = []
    items = yamlread.items(raw, "event_filters", r)
    yamlread.unique([str(item.get("name")) for _, item in items], "event_filters",
                    "event filter name", r)
    for p, item in items:
        s = r.section(item, p, {"name", "code"})
        name = r.get(s, p, "name", str, None, _label)
        code = r.get(s, p, "code", str, None)
        if name is None or code is None:
            if "name" not in s or "code" not in s:
                r.problem(p, "needs a name and code (Liquid that renders false to skip an event)")
            continue
        out.append(EventFilter(name=name, code=code, source=p))
    return tuple(out)


def _label(value: str) -> str | None:
    """A name that is any descriptive text on one line (Mechanic's event filter names)."""
    return None if value.strip() and "\n" not in value else f"expected text on one line, got {value!r}"


_TASK_KEYS = {"name", "enabled", "subscriptions", "options", "code", "code_file",
              "preview_events"}


def _tasks(raw: Any, base: Path, r: yamlread.Reader) -> list[Task]:
    out = []
    for p, item in yamlread.items(raw, "tasks", r):
        s = r.section(item, p, _TASK_KEYS)
        name = r.get(s, p, "name", str, None)
        if not name:
            r.problem(f"{p}.name", "required")
            continue
        code = r.get(s, p, "code", str, None)
        code_file = r.get(s, p, "code_file", str, None)
        if (code is None) == (code_file is None):
            r.problem(p, f"task {name!r} needs exactly one of code or code_file")
            continue
        source = p
        if code_file is not None:
            file = base / code_file
            try:
                code = file.read_text(encoding="utf-8")
                source = str(file)
            except OSError as exc:
                r.problem(f"{p}.code_file", f"cannot read {file}: {exc.strerror}")
                continue
        subs = r.get(s, p, "subscriptions", (str, list), _default(Task, "subscriptions"))
        if isinstance(subs, list):
            subs = "\n".join(str(x) for x in subs)
        options = r.get(s, p, "options", dict, _default(Task, "options"))
        previews = r.get(s, p, "preview_events", list, _default(Task, "preview_events"))
        out.append(Task(
            name=name, code=str(code), subscriptions=subs, options=options,
            enabled=r.get(s, p, "enabled", bool, _default(Task, "enabled")),
            preview_events=tuple(x for x in previews if isinstance(x, dict)),
            source=source,
        ))
    return out


def _exports(directory: Path, r: yamlread.Reader) -> list[Task]:
    """Every `*.json` in tasks_dir is a Mechanic task export."""
    out = []
    for file in sorted(directory.glob("*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            r.problem(f"tasks_dir: {file.name}", f"not a readable JSON task export: {exc}")
            continue
        try:
            out.append(dataclasses.replace(task_from_export(data, source=str(file)),
                                           from_tasks_dir=True))
        except ValueError as exc:
            r.problem(f"tasks_dir: {file.name}", str(exc))
    return out


#: Export keys that only make sense on Shopify: loading such a task is refused, not half-done.
SHOPIFY_ONLY = ("online_store_javascript", "order_status_javascript")


def task_from_export(data: Any, *, source: str) -> Task:
    """A Mechanic task export (`name`, `script`, `subscriptions[_template]`, `options`) → Task."""
    if not isinstance(data, dict):
        raise ValueError("a task export is a JSON object")
    for key in ("name", "script"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"missing {key!r} (a string)")
    for key in SHOPIFY_ONLY:
        if data.get(key):
            raise ValueError(f"not supported: {key} (Shopify storefront JavaScript)")
    subs = data.get("subscriptions_template")
    if not isinstance(subs, str):
        listed = data.get("subscriptions") or []
        if not isinstance(listed, list):
            raise ValueError("'subscriptions' must be a list of strings")
        subs = "\n".join(str(x) for x in listed)
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError("'options' must be an object")
    previews = data.get("preview_event_definitions") or []
    events = tuple(
        {"topic": d.get("event_attributes", d).get("topic"),
         "data": d.get("event_attributes", d).get("data")}
        for d in previews if isinstance(d, dict)
    )
    return Task(name=data["name"], code=data["script"], subscriptions=subs, options=options,
                enabled=bool(data.get("enabled", True)), preview_events=events, source=source)
