"""PROTOCOL §10 metrics: a prometheus-client registry for one gateway process.

Two kinds of figure:

- counted on the message path, as cheaply as the path allows: messages by direction,
  type and result (a dict increment in :class:`MessageCounts`, fed by the session where
  a frame is journaled or sealed), relayed round trips and journal commits (histograms
  observed once per answer and once per commit);
- read at scrape time, in the reactor thread that owns the journal's connection
  (:class:`GatewayCollector`): sessions, in-flight requests, the reversal queue, key
  ages, alerts by kind, suspended parties, the trade date's business by type, direction
  and state, and the end-of-day files judged by ``gateway eod watch`` (a process of its
  own: counted from the reports it leaves in ``[ops] eod_dirs``).

Nothing here renders in a thread: :meth:`OpsMetrics.render` is called by the ops
resource in the reactor thread (prometheus_client's own Twisted resource renders in a
thread pool, where the journal's connection must not be used).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .catalog import ALL_TYPES
from .errors import RESULT_TEXT

log = logging.getLogger(__name__)

#: The Prometheus text format's content type (version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Results a label may carry: the §7 codes; anything else a peer sends is "other",
#: so a peer cannot grow the number of series (nor can a refused frame's Type).
_RESULTS = frozenset(RESULT_TEXT) | {"-"}
_TYPES = frozenset(ALL_TYPES)


class MessageCounts:
    """``sbdx_messages_total``: messages journaled in and sealed out, by (direction,
    type, result); heartbeats, which are not journaled, are not counted either."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def count(self, direction: str, msg_type: str, result: str) -> None:
        key = (direction, msg_type if msg_type in _TYPES else "other",
               result if result in _RESULTS else "other")
        self.counts[key] = self.counts.get(key, 0) + 1

    def refusals(self) -> list[tuple[str, int, int]]:
        """(code, sent, received) for every result other than 0000 and ``-``: what the
        gateway answered or relayed as a refusal, and what peers answered it."""
        by_code: dict[str, list[int]] = {}
        for (direction, _, result), n in self.counts.items():
            if result not in ("-", "0000"):
                by_code.setdefault(result, [0, 0])[direction != "out"] += n
        return sorted((code, out, inn) for code, (out, inn) in by_code.items())


# --- the gateway as the collector sees it ---------------------------------------------
class EodReports:
    """The reports ``gateway eod watch`` wrote beside the files it judged, in
    ``DIR/accepted`` and ``DIR/rejected`` (and their numbered slots), read once each;
    also ``DIR/accepted/superseded`` (files a corrected one replaced): they were judged,
    and a counter never goes down."""

    def __init__(self, dirs: tuple[Path, ...]) -> None:
        self.dirs = dirs
        self._seen: dict[str, tuple[int, EodResult | None]] = {}

    def results(self) -> list[EodResult]:
        """Every report found, the newest first."""
        found: list[EodResult] = []
        for path, mtime in self._report_files():
            cached = self._seen.get(path)
            if cached is None or cached[0] != mtime:
                cached = self._seen[path] = (mtime, _read_report(path, mtime))
            if cached[1] is not None:
                found.append(cached[1])
        return sorted(found, key=lambda r: r.at, reverse=True)

    def _report_files(self) -> Iterator[tuple[str, int]]:
        for top in self.dirs:
            for verdict_dir in ("accepted", "rejected", "accepted/superseded"):
                yield from _reports_in(top / verdict_dir, slots=True)


def _reports_in(folder: Path, slots: bool) -> Iterator[tuple[str, int]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.endswith(".report.json") and entry.is_file(follow_symlinks=False):
            yield entry.path, entry.stat(follow_symlinks=False).st_mtime_ns
        elif slots and entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
            yield from _reports_in(Path(entry.path), slots=False)


@dataclass(frozen=True, slots=True)
class EodResult:
    file: str
    verdict: str  #: accepted (valid, reconciled or a BAL file), discrepancies, rejected
    records: int
    matched: int
    missing_in_file: int
    extra_in_file: int
    mismatched: int
    reason: str | None
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _read_report(path: str, mtime_ns: int) -> EodResult | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(1 << 20))
        rejected = Path(path).parent.name == "rejected" or \
            Path(path).parent.parent.name == "rejected"
        missing, extra, mismatched = (len(data.get(k) or []) for k in (
            "missing_in_file", "extra_in_file", "mismatched"))
        verdict = ("rejected" if rejected or not data.get("valid")
                   else "discrepancies" if missing or extra or mismatched else "accepted")
        return EodResult(Path(str(data.get("file", path))).name, verdict,
                         int(data.get("records") or 0), int(data.get("matched") or 0),
                         missing, extra, mismatched, data.get("reason"), mtime_ns / 1e9)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("EOD report %s unreadable: %s", path, exc)
        return None


class GatewayCollector(Collector):
    """The gauges of §10, computed from the gateway at scrape time."""

    def __init__(self, gateway: Any, counts: MessageCounts, business: BusinessToday,
                 eod: EodReports | None, clock: Callable[[], float]) -> None:
        self.gateway = gateway
        self.counts = counts
        self.business = business
        self.eod = eod
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        yield from self._sessions()
        standing = self.gateway.standing
        yield _gauge("sbdx_active", "1 while this gateway is the active one (always with "
                     "SQLite; with PostgreSQL while it holds the lease, §12), else 0",
                     1 if standing.accepts_logons else 0)
        yield _gauge("sbdx_lease_epoch", "Epoch of the §12 lease held (0: none held, or "
                     "no lease: SQLite)", standing.epoch or 0)
        yield self._messages()
        yield _gauge("sbdx_inflight", "Requests relayed and not yet answered",
                     len(self.gateway.pending))
        queued, oldest = self.gateway.journal.reversal_backlog(self.clock())
        yield _gauge("sbdx_reversal_queue", "Gateway reversals queued, not acknowledged",
                     queued)
        yield _gauge("sbdx_reversal_oldest_seconds", "Age of the oldest queued reversal",
                     oldest)
        yield from self._business()
        yield self._alerts()
        yield self._suspended()
        if self.eod is not None:
            yield self._eod_files()

    def _sessions(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("sbdx_sessions_ready", "Ready sessions (logged on and "
                                  "keyed) per registered party", labels=["party"])
        per_party = {peer.party: 0 for peer in self.gateway.keystore.peers()}
        age = GaugeMetricFamily("sbdx_session_key_age_seconds", "Age of each session's "
                                "current session key", labels=["party", "session"])
        now = self.clock()
        for session in list(self.gateway.sessions):
            party = session.party
            if party is None:
                continue
            per_party[party] = per_party.get(party, 0) + bool(session.ready)
            installed = session.keyring.installed_at
            if installed is not None:
                age.add_metric([party, session.session_id], max(0.0, now - installed))
        for party, n in sorted(per_party.items()):
            ready.add_metric([party], n)
        yield ready
        yield age

    def _messages(self) -> Metric:
        family = CounterMetricFamily("sbdx_messages", "Messages journaled in and sent out "
                                     "(heartbeats excepted); result: the §7 code of a "
                                     "response or SYS.ERROR, - otherwise",
                                     labels=["direction", "type", "result"])
        for labels, n in sorted(self.counts.counts.items()):
            family.add_metric(list(labels), n)
        return family

    def _business(self) -> Iterator[Metric]:
        labels = ["type", "direction", "status", "party", "counterparty"]
        count = GaugeMetricFamily("sbdx_business_today", "Business records of the current "
                                  "trade date (party: who sent the request, counterparty: "
                                  "who it was relayed to)", labels=labels)
        amount = GaugeMetricFamily("sbdx_business_amount_today_cny", "Their amounts, "
                                   "in yuan", labels=labels)
        for biz_type, direction, state, origin, receiver, n, fen in self.business.rows():
            values = [biz_type, direction, state, origin, receiver]
            count.add_metric(values, n)
            amount.add_metric(values, fen / 100)
        yield count
        yield amount

    def _alerts(self) -> Metric:
        family = CounterMetricFamily("sbdx_alerts", "Alerts raised (journaled), by kind",
                                     labels=["kind"])
        for kind, n in self.gateway.journal.alert_counts():
            family.add_metric([kind], n)
        return family

    def _suspended(self) -> Metric:
        family = GaugeMetricFamily("sbdx_suspended", "1 while new business with the party "
                                   "is suspended (§11: its own suspension or every "
                                   "party's), else 0", labels=["party"])
        suspensions = self.gateway.suspensions
        for peer in sorted(self.gateway.keystore.peers(), key=lambda p: p.party):
            family.add_metric([peer.party], int(suspensions.of(peer.party) is not None))
        return family

    def _eod_files(self) -> Metric:
        assert self.eod is not None
        family = CounterMetricFamily("sbdx_eod_files", "End-of-day files judged by "
                                     "`gateway eod watch` in [ops] eod_dirs",
                                     labels=["verdict"])
        by_verdict = dict.fromkeys(("accepted", "discrepancies", "rejected"), 0)
        for result in self.eod.results():
            by_verdict[result.verdict] += 1
        for verdict, n in by_verdict.items():
            family.add_metric([verdict], n)
        return family


Business = tuple[str, str, str, str, str, int, int]


class BusinessToday:
    """(type, direction, state, From, To, count, fen) of the current trade date, read
    again at most every ``ttl`` seconds (and at once when the trade date changes): the
    query reads every record of the day in the reactor thread, ~85 ms per 100 000
    records on the benchmark machine (docs/BENCHMARKS.md), so a scrape and the page's
    refreshes share one reading."""

    def __init__(self, gateway: Any, ttl: float) -> None:
        self.gateway = gateway
        self.ttl = ttl
        self._day = ""
        self._at = float("-inf")
        self._rows: list[Business] = []

    def rows(self) -> list[Business]:
        now, day = self.gateway.now(), self.gateway.trade_date()
        if day != self._day or not 0 <= now - self._at < self.ttl:
            self._rows = sorted(self.gateway.journal.business_totals_by_pair(
                day, self.gateway.config.party))
            self._day, self._at = day, now
        return self._rows


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


# --- histograms fed on the path ---------------------------------------------------------
class CommitWatch:
    """Wraps the gateway's ``flush`` (the group commit of a reactor turn): the commit's
    time and the frames it released go to the histograms, and /healthz learns when a
    flush last succeeded.  The journal times its own COMMITs (``commit_stats``)."""

    def __init__(self, gateway: Any, seconds: Histogram, frames: Histogram,
                 clock: Callable[[], float]) -> None:
        self.stats = gateway.journal.commit_stats
        self.seconds = seconds
        self.frames = frames
        self.clock = clock
        self.failed = False
        self.last_ok = clock()
        self._flush: Callable[[bool], int] = gateway.flush
        gateway.flush = self

    def __call__(self, background: bool = False) -> int:
        stats = self.stats
        commits, spent = stats.commits, stats.seconds
        try:
            released = self._flush(background)
        except Exception:
            self.failed = True
            raise
        if stats.commits != commits:
            self.seconds.observe(stats.seconds - spent)
            self.frames.observe(released)
        self.last_ok = self.clock()
        return released


class OpsMetrics:
    """The registry of one gateway: its histograms, message counts and collector."""

    def __init__(self, gateway: Any, eod: EodReports | None, clock: Callable[[], float],
                 business_seconds: float = 5.0) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = CollectorRegistry(auto_describe=False)
        self.messages = MessageCounts()
        self.relay_seconds = Histogram(
            "sbdx_relay_seconds", "Relayed round trips: request relayed to its answer",
            registry=self.registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.commit_seconds = Histogram(
            "sbdx_commit_seconds", "Journal group commits (fsync included)",
            registry=self.registry,
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.commit_frames = Histogram(
            "sbdx_commit_frames", "Frames (after-commit actions) each commit released",
            registry=self.registry, buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        self.business = BusinessToday(gateway, business_seconds)
        self.registry.register(GatewayCollector(gateway, self.messages, self.business, eod,
                                                clock))

    def render(self) -> bytes:
        """The Prometheus text format (in the reactor thread)."""
        return generate_latest(self.registry)
