"""PROTOCOL §10 alert thresholds: the ``[alerts]`` table and the checks of the gateway.

:class:`AlertSettings` is the table, checked whole (a bad value is one line saying
which and why).  :class:`Monitor` raises the kinds the relay sees through
:class:`~gateway.alerts.Alerts`: ``xfer_amount`` and ``xfer_daily_total`` when a
transfer settles, ``reversal_backlog`` from the periodic tick, ``journal_slow`` from the
journal's commit times; it hands every alert to ``[alerts] command``.  Sans-IO: the
clock, the trade date and the journal are handed in.  (``eod_*`` and ``overdraft`` are
raised by the ``eod`` commands in their own process: gateway/eod/alerting.py;
``peer_down`` by the server.)
"""
from __future__ import annotations

import logging
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import records
from .alerts import CRITICAL, WARNING, AlertCommand, Alerts
from .config import CONFIG_FILE, ConfigError
from .journal import Journal, Record

log = logging.getLogger(__name__)

#: Every kind of §10 and its severity (``agreement_conflict``, critical, is the rules').
SEVERITY: dict[str, str] = {
    "xfer_amount": WARNING, "xfer_daily_total": WARNING, "reversal_backlog": CRITICAL,
    "peer_down": CRITICAL, "eod_rejected": CRITICAL, "eod_discrepancy": CRITICAL,
    "overdraft": CRITICAL, "journal_slow": WARNING}
TRANSFERS = ("XFER.IN", "XFER.OUT")
#: Seconds between two looks at the reversal queue (the tick comes every 0.2 s).
BACKLOG_CHECK_SECONDS = 1.0
REVERSAL_SUBJECT = "reversal queue"
JOURNAL_SUBJECT = "journal"
_MONEY = re.compile(r"(0|[1-9][0-9]{0,12})(\.[0-9]{1,2})?\Z")


class AlertSettingsError(ConfigError):
    """A bad value in ``[alerts]``; the message names the key."""


@dataclass(frozen=True)
class AlertSettings:
    """The ``[alerts]`` table (docs/operations.md "Alerts"); amounts in fen, None: off."""

    #: The program run with each alert as one JSON line on stdin; empty: none.
    command: tuple[str, ...] = ()
    #: A command still running after this long is killed (and logged).
    command_timeout_seconds: float = 10.0
    #: xfer_amount: one transfer above this.
    xfer_single_max: int | None = None
    #: xfer_daily_total: a FundAcct's transfers of the trade date above this.
    xfer_daily_max: int | None = None
    #: xfer_daily_total: a bank–broker pair's transfers of the trade date above this.
    pair_daily_max: int | None = None
    #: reversal_backlog: a queued reversal older than this.
    reversal_age_max_seconds: float = 300.0
    #: peer_down: a required peer without a ready session this long (the server's).
    peer_down_seconds: float = 60.0
    #: journal_slow: one journal commit longer than this.
    commit_slow_seconds: float = 1.0
    #: The keys the table set (the rest are defaults).
    explicit: frozenset[str] = field(default=frozenset(), compare=False)


_MONEY_KEYS = ("xfer_single_max", "xfer_daily_max", "pair_daily_max")
_SECONDS_KEYS = ("command_timeout_seconds", "reversal_age_max_seconds", "peer_down_seconds",
                 "commit_slow_seconds")


def parse_settings(table: Mapping[str, Any]) -> AlertSettings:
    """The ``[alerts]`` table, checked; :class:`AlertSettingsError` on the first bad key."""
    known = {f.name for f in fields(AlertSettings)} - {"explicit"}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise AlertSettingsError(f"[alerts] {key}: unknown setting (known: "
                                     f"{', '.join(sorted(known))})")
        values[key] = _value(key, value)
    return AlertSettings(**values, explicit=frozenset(values))


def _value(key: str, value: Any) -> Any:
    if key in _MONEY_KEYS:
        if not isinstance(value, str) or not _MONEY.match(value):
            raise AlertSettingsError(f'[alerts] {key} must be an amount in yuan as a decimal '
                                     f'string, like "5000.00" (got {value!r})')
        whole, _, cents = value.partition(".")
        return int(whole) * 100 + int(cents.ljust(2, "0") or 0)
    if key in _SECONDS_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
                or value == float("inf"):
            raise AlertSettingsError(f"[alerts] {key} must be a positive number of seconds "
                                     f"(got {value!r})")
        return float(value)
    return _command(value)


def _command(value: Any) -> tuple[str, ...]:
    """A string split like a shell would (no shell runs it), or a list of strings."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise AlertSettingsError(f"[alerts] command: {exc}") from None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise AlertSettingsError("[alerts] command must be a string (\"/path/notify --flag\") or "
                             f"a list of strings (got {value!r})")


def load_settings(home: Path) -> AlertSettings:
    """``HOME/gateway.toml``'s ``[alerts]`` table; defaults if there is none."""
    path = home / CONFIG_FILE
    if not path.exists():
        return AlertSettings()
    try:
        table = tomllib.loads(path.read_text("utf-8")).get("alerts", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AlertSettingsError(f"{path}: {exc}") from None
    if not isinstance(table, dict):
        raise AlertSettingsError("[alerts] must be a table")
    return parse_settings(table)


@dataclass
class DayTotals:
    """One trade date's transfers by FundAcct and by pair (fen, gross: IN plus OUT)."""

    fund: dict[str, int] = field(default_factory=dict)
    pair: dict[str, int] = field(default_factory=dict)
    #: Subjects that crossed their threshold that day: never raised twice.
    crossed: set[str] = field(default_factory=set)
    #: Originals reversed since the start: never taken off twice.
    reversed: set[tuple[str, str, str]] = field(default_factory=set)


FUND, PAIR = "FundAcct", "pair"


def fen_text(fen: int) -> str:
    """123450 → ``"1234.50"`` (yuan, as §10's money thresholds are written)."""
    sign, (whole, cents) = "-" if fen < 0 else "", divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def pair_of(a: str, b: str) -> str:
    """A bank–broker pair, the same whoever originated: ``CCB/GTJA``."""
    return "/".join(sorted((a, b)))


def _count(day: DayTotals, origin: str, receiver: str, fund: str, fen: int) -> tuple[str, str]:
    """Add ``fen`` to a transfer's FundAcct and pair; their names."""
    pair = pair_of(origin, receiver)
    day.fund[fund] = day.fund.get(fund, 0) + fen
    day.pair[pair] = day.pair.get(pair, 0) + fen
    return fund, pair


class Monitor:
    """The gateway's threshold checks (§10).  ``trade_date`` is the gateway's current
    trade date; totals are kept for it and the one before (a request of the previous
    date is still admitted for a few minutes after midnight)."""

    def __init__(self, alerts: Alerts, journal: Journal, trade_date: Callable[[], str],
                 settings: AlertSettings | None = None) -> None:
        self.alerts = alerts
        self.journal = journal
        self.trade_date = trade_date
        self.settings = settings or AlertSettings()
        self.command = AlertCommand(self.settings.command, self.settings.command_timeout_seconds)
        alerts.listeners.append(self.command)
        journal.commit_listeners.append(self.commit_timed)
        self.day = trade_date()
        self.totals: dict[str, DayTotals] = {self.day: self._seeded(self.day)}
        self._next_backlog_check = 0.0
        self._check_totals(self.day)

    # --- settings -------------------------------------------------------------------
    def configure(self, settings: AlertSettings, cwd: Path | None = None) -> None:
        """New thresholds (at start, and on SIGHUP): totals already above a lowered
        threshold are raised now."""
        self.settings = settings
        self.command.configure(settings.command, settings.command_timeout_seconds)
        if cwd is not None:
            self.command.cwd = cwd
        self._check_totals(self.day)

    def reload(self, table: Mapping[str, Any]) -> None:
        """The SIGHUP hook (GatewayService.alerts_reload_hooks): a bad table keeps the
        settings in use."""
        try:
            settings = parse_settings(table)
        except AlertSettingsError as exc:
            log.error("SIGHUP: %s; the [alerts] settings in use are kept", exc)
            return
        self.configure(settings)

    def close(self, wait: float | None = None) -> bool:
        """At stop: let the command finish with the last alerts (bounded)."""
        timeout = self.settings.command_timeout_seconds
        return self.command.close(timeout if wait is None else wait)

    # --- transfers --------------------------------------------------------------------
    def transfer_settled(self, rec: Record, state: str) -> None:
        """The relay settled ``rec`` into ``state``: a transfer that succeeded counts."""
        if rec.biz_type not in TRANSFERS or state != records.SUCCEEDED:
            return
        fen = rec.amount_fen or 0
        limit = self.settings.xfer_single_max
        if limit is not None and fen > limit:
            self.alerts.raise_alert(
                "xfer_amount", SEVERITY["xfer_amount"], f"{rec.origin}/{rec.biz_sn}",
                f"{rec.biz_type} {rec.biz_sn} from {rec.origin} to {rec.receiver}: "
                f"{fen_text(fen)} CNY, above xfer_single_max {fen_text(limit)} (FundAcct "
                f"{rec.fund_acct}, trade date {rec.trade_date})")
        self._add(rec, fen)

    def transfer_reversed(self, original: tuple[str, str, str]) -> None:
        """A reversal of ``original`` was acknowledged: a transfer that had succeeded no
        longer counts (a crossed total stays raised: it clears with the trade date)."""
        rec = self.journal.record(*original)
        day = self.totals.get(rec.trade_date) if rec is not None else None
        if (rec is None or day is None or rec.biz_type not in TRANSFERS
                or rec.result != "0000" or original in day.reversed):
            return
        day.reversed.add(original)
        _count(day, rec.origin, rec.receiver, rec.fund_acct or "", -(rec.amount_fen or 0))

    def _add(self, rec: Record, fen: int) -> None:
        self._roll_over()
        day = self.totals.get(rec.trade_date)
        if day is None:  # older than the totals kept: its day is over
            return
        fund, pair = _count(day, rec.origin, rec.receiver, rec.fund_acct or "", fen)
        def undo() -> None:  # a message's savepoint rolled back takes the count back too
            _count(day, rec.origin, rec.receiver, fund, -fen)

        self.journal.on_rollback(undo)
        self._check(rec.trade_date, day, FUND, fund)
        self._check(rec.trade_date, day, PAIR, pair)

    def _seeded(self, date: str) -> DayTotals:
        """A trade date's totals from the journal (at start: a restart keeps them)."""
        day = DayTotals()
        for origin, receiver, fund, fen in self.journal.transfer_totals(date):
            _count(day, origin, receiver, fund, fen)
        return day

    def _check_totals(self, date: str) -> None:
        """Every total of ``date`` against its threshold (at start, after SIGHUP)."""
        day = self.totals.get(date)
        if day is not None:
            for name in list(day.fund):
                self._check(date, day, FUND, name)
            for name in list(day.pair):
                self._check(date, day, PAIR, name)

    def _check(self, date: str, day: DayTotals, what: str, name: str) -> None:
        """Raise a total above its threshold, once a trade date; one journaled before a
        restart is open again, not raised twice."""
        sums, key = (day.fund, "xfer_daily_max") if what == FUND else (day.pair, "pair_daily_max")
        limit: int | None = getattr(self.settings, key)
        fen = sums.get(name, 0)
        subject = f"{what} {name} {date}"
        if limit is None or fen <= limit or subject in day.crossed:
            return
        day.crossed.add(subject)
        self.journal.on_rollback(lambda: day.crossed.discard(subject))
        if not self.alerts.restore("xfer_daily_total", subject, 0.0):
            self.alerts.raise_state(
                "xfer_daily_total", SEVERITY["xfer_daily_total"], subject,
                f"{what} {name}: transfers of trade date {date} total {fen_text(fen)} CNY "
                f"(IN plus OUT), above {key} {fen_text(limit)}")

    def _roll_over(self) -> None:
        """A new trade date: its totals start at zero, the day before is kept for late
        answers, older ones are dropped; the daily totals raised before it clear."""
        today = self.trade_date()
        if today == self.day:
            return
        previous, self.day = self.day, today
        self.totals = {d: t for d, t in self.totals.items() if d == previous}
        self.totals[today] = DayTotals()
        for kind, subject in list(self.alerts.open):
            if kind == "xfer_daily_total" and not subject.endswith(" " + today):
                self.alerts.clear(kind, subject)

    def day_totals(self) -> dict[str, Any]:
        """The current trade date's totals against their thresholds (fen): the page's."""
        day = self.totals.get(self.day, DayTotals())
        return {"trade_date": self.day, "fund": dict(day.fund), "pair": dict(day.pair),
                "xfer_daily_max": self.settings.xfer_daily_max,
                "pair_daily_max": self.settings.pair_daily_max,
                "xfer_single_max": self.settings.xfer_single_max}

    # --- the tick and the journal ------------------------------------------------------
    def tick(self, now: float) -> None:
        """From the gateway's tick: the trade date, and (once a second) the reversal
        queue."""
        self._roll_over()
        if now < self._next_backlog_check:
            return
        self._next_backlog_check = now + BACKLOG_CHECK_SECONDS
        count, age = self.journal.reversal_backlog(now)
        limit = self.settings.reversal_age_max_seconds
        if not count or age <= limit:
            self.alerts.clear("reversal_backlog", REVERSAL_SUBJECT)
            return
        # the condition holds since the oldest queued reversal became too old: an alert
        # journaled since then (before a restart) is this one
        if not self.alerts.restore("reversal_backlog", REVERSAL_SUBJECT, now - age + limit):
            self.alerts.raise_state(
                "reversal_backlog", SEVERITY["reversal_backlog"], REVERSAL_SUBJECT,
                f"{count} reversal(s) queued and unacknowledged, the oldest for {age:.0f} s "
                f"(reversal_age_max_seconds {limit:g}); is the receiver connected?")

    def commit_timed(self, seconds: float) -> None:
        """Journal.commit_listeners: a slow commit raises journal_slow, a normal one
        clears it."""
        limit = self.settings.commit_slow_seconds
        if seconds <= limit:
            self.alerts.clear("journal_slow", JOURNAL_SUBJECT)
            return
        self.alerts.raise_state(
            "journal_slow", SEVERITY["journal_slow"], JOURNAL_SUBJECT,
            f"a journal commit took {seconds:.2f} s (commit_slow_seconds {limit:g}): every "
            "answer of that turn waited for it; look at the disk holding data/")
