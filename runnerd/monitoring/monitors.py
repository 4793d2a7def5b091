"""Monitors in the daemon: the ticker, pings, alert emails, and the `monitor tasks` check.

The ticker evaluates every monitor once a second as a function of `now` (`Monitors.tick`): it
reads the monitored rows, and only when one should change state (or owes the summary of its
damped flips) does it write, re-evaluating inside the transaction (`taskstatus.tick`), so a tick
never flips a row twice nor one a ping already moved. After a reload it first copies the new
`monitors:` into the rows (`sync`).

Alerts are durable: a flip to or from `down` inserts a `monitor_flips` row in the same transaction
as the state change, `pending` unless damped (`taskstatus`: at most one alert per monitor per
`monitoring.alert_interval`). The alert loop (`Monitors.deliver`) emails each pending row to
`monitoring.mail_recipients` through the email action's executor (SMTP), or, with
`transport: outbox`, writes the `outbox` row and marks the flip sent in one transaction. A
transient SMTP failure is retried with backoff; a restart resumes the pending rows and never
re-sends a sent one (at-least-once: a crash between the SMTP reply and the write re-sends it).
Before sending, the loop takes the row (`flip_take`, a conditional update whose rowcount
decides), so when several nodes share a PostgreSQL database one of them sends each alert; a
node that dies sending leaves it to the others after `ALERT_TAKE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runnerd import config, errors, models
from runnerd.actions import email
from runnerd.actions import message as mail_
from runnerd.monitoring import pings
from runnerd.queue import runs, taskstatus
from runnerd.store import db

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0
#: Waits between attempts to email an alert; then it is marked failed.
ALERT_BACKOFF = (30.0, 76.0, 152.0, 308.0, 600.0)
#: How long an alert taken for sending is this node's: four SMTP timeouts at the default 30 s.
ALERT_TAKE_SECONDS = 120.0
#: The monitor's facts an alert email lists.
ALERT_FACTS = ("state", "previous_state", "last_status", "last_success_at", "last_failure_at",
               "last_started_at", "last_error", "state_changed_at")


def specs(settings: config.Settings) -> dict[str, taskstatus.Spec]:
    """Each configured monitor's spec, by row name (a task monitor's row is its task's)."""
    return {m.name: taskstatus.Spec.of(m, settings) for m in settings.monitors}


def ping_monitor(settings: config.Settings, name: str) -> config.Monitor | None:
    """The monitor `/ping/{name}` reports to (task monitors are fed by runs, not pings)."""
    return next((m for m in settings.monitors if m.name == name and m.task is None), None)


async def ping(database: db.Database, settings: config.Monitoring, received: pings.Ping,
               now: float) -> list[models.Event]:
    """Record a ping and its history (`pings.record`); store the events a flip created."""

    def work(tx: db.Tx) -> list[models.Event]:
        events = pings.record(tx, received, now, body_limit=settings.ping_body_limit,
                              keep=settings.ping_history)
        runs.insert_events(tx, events, now)
        return events

    return await database.write(work)


def mail_options(recipients: Sequence[str], subject: str, body: str) -> dict[str, Any]:
    """Options of an email action."""
    return {"to": list(recipients), "subject": subject, "body": body}


def _outbox_row(settings: config.Email, options: Mapping[str, Any], now: float) -> dict[str, Any]:
    mail = mail_.Mail(options)
    sender = mail_.parse_address(settings.sender, "email.from")
    return mail.outbox_row(sender, mail.message(sender, now), now, None)


def _context(now: float) -> Any:
    """An action context for mail runnerd sends itself (not an action run: id 0)."""
    from runnerd import actions

    event = models.Event(id="", topic="runnerd/monitors/alert", data=None, source="runnerd",
                         created_at=now)
    run = models.Run(id=0, kind=models.RunKind.ACTION, state=models.RunState.STARTED,
                     priority=3, run_at=now, event_id="", task_name=None, action_type="email",
                     options=None, meta=None, perform_event=False, result=None, error=None,
                     attempts=1, created_at=now, started_at=now, finished_at=None)
    return actions.Context(run=run, event=event, now=now)


async def send_mail(database: db.Database, settings: config.Email,
                    executor: email.EmailExecutor, options: Mapping[str, Any], now: float,
                    also: Callable[[db.Tx], Any] | None = None) -> str:
    """Email now (SMTP) or store in the outbox; `also(tx)` runs in the outbox's transaction.

    Returns how it went ("sent" or "outbox"); raises errors.ActionFailed.
    """
    if settings.transport == "outbox":
        row = _outbox_row(settings, options, now)

        def store(tx: db.Tx) -> None:
            tx.execute("insert_outbox", row)
            if also is not None:
                also(tx)

        await database.write(store)
        return "outbox"
    await executor.perform(dict(options), _context(now))
    if also is not None:
        await database.write(also)
    return "sent"


def alert_mail(flip: Mapping[str, Any]) -> tuple[str, str]:
    """Subject and HTML body of the alert for a `monitor_flips` row.

    An alert that counts damped changes (`flaps` in its status) says "flapped N times since"
    the previous alert, in its subject and its first line.
    """
    status = models.loads(flip["status"])
    name, old, new = flip["name"], flip["old_state"], flip["new_state"]
    flaps, keys = status.get("flaps") or 0, list(ALERT_FACTS)
    if flaps:
        since = status["flapping_since"]
        subject = f"runnerd: monitor {name} is {new.upper()} (flapped {flaps} times since {since})"
        lead = (f"Monitor <b>{html.escape(name)}</b> flapped {flaps} times since the previous "
                f"alert at {since} (at most one alert per monitoring.alert_interval). It is now "
                f"<b>{html.escape(new)}</b>; the previous alert said {html.escape(old)}.")
        keys += ["flaps", "flapping_since"]
    else:
        subject = (f"runnerd: monitor {name} is DOWN" if new == "down"
                   else f"runnerd: monitor {name} is {new.upper()} again")
        lead = (f"Monitor <b>{html.escape(name)}</b> went from {html.escape(old)} to "
                f"<b>{html.escape(new)}</b> at {models.iso(flip['created_at'])}.")
    facts = "".join(f"<tr><th align=left>{html.escape(k.replace('_', ' '))}</th>"
                    f"<td>{html.escape(_fact(k, status.get(k)))}</td></tr>" for k in keys)
    return subject, f"<p>{lead}</p><table>{facts}</table>"


def _fact(key: str, value: Any) -> str:
    """A fact as an alert shows it: a missing time is "never", another missing value "-"."""
    if value is None:
        return "never" if key.endswith("_at") or key.endswith("_since") else "-"
    return str(value)


def _due(row: Any, now: float) -> bool:
    """Whether the ticker has something to write for this monitored row at `now`."""
    spec = taskstatus.Spec.from_json(row["monitor"])
    return (taskstatus.evaluate(spec, row, now) != row["state"]
            or taskstatus.summary_due(spec, row, now))


class Monitors:
    """The ticker and the alert sender of one daemon."""

    def __init__(self, database: db.Database, get_settings: Callable[[], config.Settings], *,
                 clock: Callable[[], float] = time.time,
                 on_event: Callable[[], None] = lambda: None,
                 tick_seconds: float = TICK_SECONDS) -> None:
        self.db = database
        self.get_settings = get_settings
        self.clock = clock
        self.on_event = on_event
        self.tick_seconds = tick_seconds
        self.alerts_wakeup = asyncio.Event()
        self.last_tick: float | None = None
        self._synced: config.Settings | None = None
        self._executor: email.EmailExecutor | None = None
        self._executor_for: config.Email | None = None

    async def tick(self, now: float) -> list[models.Event]:
        """Evaluate every monitor at `now`; write only the flips. Returns the events created."""
        settings = self.get_settings()
        if settings is not self._synced:
            wanted = specs(settings)
            events = await self.db.write(lambda tx: self._store(tx, taskstatus.sync(
                tx, wanted, now), now))
            self._synced = settings
        else:
            rows = await self.db.read(lambda tx: tx.all("status_monitored"))
            changed = [r["name"] for r in rows if _due(r, now)]
            events = []
            if changed:
                events = await self.db.write(lambda tx: self._store(
                    tx, taskstatus.tick(tx, changed, now), now))
        self.last_tick = now
        if events:
            for event in events:
                logger.warning("monitor %s: %s", event.data["name"], event.topic,
                               extra={"action": "monitor_flip", "topic": event.topic})
            self.on_event()
            self.alerts_wakeup.set()
        return events

    @staticmethod
    def _store(tx: db.Tx, events: list[models.Event], now: float) -> list[models.Event]:
        runs.insert_events(tx, events, now)
        return events

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` (a database error is logged and the next tick tries again)."""
        while not stop.is_set():
            try:
                await self.tick(self.clock())
            except errors.DatabaseError as exc:
                logger.error("monitors cannot write: %s", exc, extra={"action": "db_write_failed"})
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.tick_seconds)
            except TimeoutError:
                pass

    async def _email(self, settings: config.Email) -> email.EmailExecutor:
        """The alerts' own executor (its SMTP connection is reused); rebuilt after a reload."""
        if self._executor is None or self._executor_for != settings:
            if self._executor is not None:
                await self._executor.close()
            self._executor, self._executor_for = email.EmailExecutor(settings), settings
        return self._executor

    async def deliver(self, now: float) -> int:
        """Email the pending alerts that are due and that this node takes; return how many
        were handled."""
        settings = self.get_settings()
        flips = await self.db.read(lambda tx: tx.all("flips_due", {"now": now, "limit": 50}))
        handled = 0
        for flip in flips:
            if await self.db.write(self._take(flip["id"], now)):
                await self._deliver_one(settings, flip, now)
                handled += 1
        return handled

    @staticmethod
    def _take(flip_id: int, now: float) -> Callable[[db.Tx], bool]:
        """The transaction taking a pending alert for this node to send: False when another
        node took it first."""
        return lambda tx: tx.execute("flip_take", {
            "id": flip_id, "now": now, "until": now + ALERT_TAKE_SECONDS}).rowcount > 0

    async def _deliver_one(self, settings: config.Settings, flip: Any, now: float) -> None:
        recipients = settings.monitoring.mail_recipients
        flip_id = flip["id"]

        def done(state: str, error: str | None = None) -> Callable[[db.Tx], Any]:
            return lambda tx: tx.execute("flip_mail_done", {
                "id": flip_id, "mail_state": state, "error": error,
                "sent_at": now if state == "sent" else None})

        if not recipients:
            await self.db.write(done("skipped"))
            return
        subject, body = alert_mail(flip)
        options = mail_options(recipients, subject, body)
        try:
            how = await send_mail(self.db, settings.email, await self._email(settings.email),
                                  options, now, also=done("sent"))
        except errors.ActionFailed as exc:
            message, attempt = exc.message, flip["mail_attempts"] + 1
            if exc.retryable and attempt <= len(ALERT_BACKOFF):
                next_at = now + ALERT_BACKOFF[attempt - 1]
                await self.db.write(lambda tx: tx.execute("flip_mail_retry", {
                    "id": flip_id, "error": message, "next_at": next_at}))
            else:
                await self.db.write(done("failed", message))
            logger.error("alert for monitor %s not sent: %s", flip["name"], message,
                         extra={"action": "alert_failed"})
            return
        logger.info("alert for monitor %s %s", flip["name"], how,
                    extra={"action": "alert_sent"})

    async def run_alerts(self, stop: asyncio.Event) -> None:
        """Deliver alerts as flips happen (and retries come due) until `stop`."""
        try:
            while not stop.is_set():
                self.alerts_wakeup.clear()
                try:
                    await self.deliver(self.clock())
                except errors.DatabaseError as exc:
                    logger.error("alerts cannot be read: %s", exc,
                                 extra={"action": "db_write_failed"})
                waiters = [asyncio.ensure_future(self.alerts_wakeup.wait()),
                           asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            if self._executor is not None:
                await self._executor.close()


def check_tasks(found: Mapping[str, Any],
                checks: Sequence[tuple[str, float]], now: float) -> list[dict[str, Any]]:
    """`runnerd monitor tasks`: ok, stale, failing or unknown per (name, minutes) (pure)."""
    out = []
    for name, minutes in checks:
        row = found.get(name)
        if row is None or row["last_run_at"] is None:
            status = "unknown"
        elif row["last_status"] == "failed":
            status = "failing"
        elif row["last_success_at"] is None or now - row["last_success_at"] > minutes * 60:
            status = "stale"
        else:
            status = "ok"
        out.append({
            "name": name, "status": status,
            "last_run_at": models.iso(row["last_run_at"]) if row else None,
            "last_success_at": models.iso(row["last_success_at"]) if row else None,
            "last_status": row["last_status"] if row else None,
            "last_error": row["last_error"] if row else None,
        })
    return out


def describe(result: Mapping[str, Any], minutes: float) -> str:
    """One line of `runnerd monitor tasks`."""
    name, status = result["name"], result["status"]
    if status == "unknown":
        return f"unknown  {name}: it never ran (no task_status row); is the name right?"
    success = result["last_success_at"] or "never"
    if status == "failing":
        error = (result["last_error"] or "").splitlines()[0][:120] if result["last_error"] else ""
        return (f"failing  {name}: its latest run failed at {result['last_run_at']}: {error} "
                f"(last success: {success})")
    if status == "stale":
        return f"stale    {name}: no success within {minutes:g} min (last success: {success})"
    return f"ok       {name}: last success {success}, within {minutes:g} min"


async def monitor_tasks(database: db.Database, settings: config.Settings,
                        checks: Sequence[tuple[str, float]], *, mail: bool,
                        now: float) -> tuple[list[dict[str, Any]], str | None]:
    """Check, and email the problems unless `mail` is False; (results, what the mail did)."""
    names = [name for name, _ in checks]
    found = await database.read(lambda tx: {
        n: tx.one("status_get", {"name": n}) for n in names})
    results = check_tasks(found, checks, now)
    bad = [r for r in results if r["status"] != "ok"]
    if not bad or not mail:
        return results, None
    recipients = settings.monitoring.mail_recipients
    if not recipients:
        return results, "no monitoring.mail_recipients: no email sent"
    minutes = dict(checks)
    subject = f"runnerd: {len(bad)} task(s) not OK: {', '.join(r['name'] for r in bad)}"[:200]
    body = "".join(f"<p>{html.escape(describe(r, minutes[r['name']]))}</p>" for r in bad)
    body += "<p>We suggest checking the logs: <code>runnerd runs --state failed</code>.</p>"
    executor = email.EmailExecutor(settings.email)
    try:
        how = await send_mail(database, settings.email, executor,
                              mail_options(recipients, subject, body), now)
    except errors.ActionFailed as exc:
        return results, f"alert email failed: {exc.message}"
    finally:
        await executor.close()
    return results, f"alert email {'stored in the outbox' if how == 'outbox' else 'sent'}"
