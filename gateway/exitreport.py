"""``gateway exit-report [--party P] [--json]`` (PROTOCOL §11): what keeps each client
from leaving.

For every agreement still in force (ACTIVE, or a sign still unanswered) it lists what
keeps it from being unsigned now — records of the wallet not final (PENDING,
REVERSING), the gateway's queued reversals of them, paid services still in their
validity, and funds left in the fund account — and which agreements can be unsigned
now; then, per corporate wallet, the income-certificate subscriptions not yet
redeemed in full.  The funds are the account's balance in the latest *checked* BAL
file of the broker and bank (one ``gateway eod watch`` accepted) plus the transfers
the journal holds since that file was made; without such a file (or without the
account in it), the journal's net transfers (XFER.IN − XFER.OUT that succeeded, less
what is reversed or being given back).

Pure functions over journal queries and the BAL files' text: no Twisted, no clock of
its own (``today`` and ``now`` are given).  Only :func:`exit_report_command` does I/O.
The JSON shape is documented in docs/operations.md ("Business exit").
"""
from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import givebacks, records
from .bookdate import CHINA
from .exitcodes import EXIT_DISCREPANCIES, EXIT_OK
from .exitcodes import EXIT_FAILED as _FAILED
from .givebacks import fen_text
from .journal import Agreement, Journal, Record
from .journalshow import mask

#: Exit codes of ``gateway exit-report`` (gateway/exitcodes.py; docs/operations.md).
EXIT_READY = EXIT_OK  #: every agreement listed can be unsigned now, no subscription left
#: nothing reported: no journal, an unreadable one, a bad gateway.toml, an unknown party
EXIT_FAILED = _FAILED
#: something keeps a client from leaving (the report says what): 3, as a check that
#: found discrepancies
EXIT_BLOCKED = EXIT_DISCREPANCIES

#: Version of the ``--json`` shape; raised when a field changes meaning or goes.
JSON_VERSION = 1

XFERS = ("XFER.IN", "XFER.OUT")
OPEN = (records.PENDING, records.REVERSING)

# blocker kinds (the JSON ``kind``)
SIGN_PENDING = "sign_pending"
OPEN_RECORD = "open_record"
REVERSAL_QUEUED = "reversal_queued"
SERVICE = "service"
FUNDS = "funds"

BAL_NAME = re.compile(r"BAL_[A-Z0-9]{2,12}_[A-Z0-9]{2,12}_[0-9]{8}\.txt")


def signed_text(fen: int) -> str:
    """Fen as yuan with two decimals, a minus sign when negative."""
    return fen_text(fen) if fen >= 0 else "-" + fen_text(-fen)


# --- BAL files (§8), as `gateway eod watch` leaves them in accepted/ ------------------
@dataclass(frozen=True, eq=False)  # hashed by identity: one per file read
class BalFile:
    """A BAL file found checked (accepted, its report says valid): its balances."""

    path: Path
    broker: str  #: FROM: the broker that wrote it
    bank: str  #: TO: the bank it is for
    day: dt.date
    created: dt.datetime  #: the header's created time
    balances: dict[tuple[str, str], int]  #: (FundAcct, WalletId) → fen

    @property
    def name(self) -> str:
        return self.path.name


def parse_bal(path: Path, text: str) -> BalFile:
    """The parts of a BAL file's text the report reads (the file was checked whole by
    ``eod check``/``eod watch`` already: signature, trailer, records); ValueError if it
    does not even look like one."""
    lines = text.split("\n")
    head = lines[0].split("|")
    if len(head) != 7 or head[:3] != ["H", "SBDX1", "BAL"]:
        raise ValueError(f"{path.name}: not a BAL file header")
    balances: dict[tuple[str, str], int] = {}
    for line in lines[1:]:
        if line.startswith("D|"):
            _, fund, wallet, amount = line.split("|")
            negative = amount.startswith("-")
            yuan, _, cents = amount.lstrip("-").partition(".")
            fen = int(yuan) * 100 + int(cents)
            balances[(fund, wallet)] = -fen if negative else fen
    created = dt.datetime.fromisoformat(head[6])
    if created.tzinfo is None:
        created = created.replace(tzinfo=CHINA)
    return BalFile(path, head[4], head[5], dt.datetime.strptime(head[3], "%Y%m%d").date(),
                   created, balances)


def accepted_bal_files(folders: Iterable[Path]) -> tuple[list[BalFile], list[str]]:
    """The BAL files ``eod watch`` accepted in each drop folder (``DIR/accepted/`` and
    its numbered slots), each with a report beside it that says ``"valid": true``; and
    a line for each one that could not be read (it is left out)."""
    found: list[BalFile] = []
    problems: list[str] = []
    for folder in folders:
        accepted = folder / "accepted"
        if not accepted.is_dir():
            continue
        slots = [accepted] + sorted((p for p in accepted.iterdir()
                                     if p.name.isdigit() and p.is_dir()),
                                    key=lambda p: int(p.name))
        for slot in slots:
            for path in sorted(slot.glob("BAL_*.txt")):
                if not BAL_NAME.fullmatch(path.name):
                    continue  # its reports: NAME.report.txt
                try:
                    report = json.loads((slot / (path.name + ".report.json")).read_text("utf-8"))
                    if report.get("valid") is not True:
                        continue
                    found.append(parse_bal(path, path.read_text("utf-8")))
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    problems.append(f"{path}: left out: {exc}")
    return found, problems


def latest_bal(files: Sequence[BalFile], broker: str, bank: str) -> BalFile | None:
    """The broker's latest checked BAL file for the bank: latest trade date, then the
    latest made."""
    mine = [f for f in files if (f.broker, f.bank) == (broker, bank)]
    return max(mine, key=lambda f: (f.day, f.created)) if mine else None


# --- the report -----------------------------------------------------------------------
@dataclass(frozen=True)
class Blocker:
    """One thing that keeps an agreement from being unsigned now."""

    kind: str
    text: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.detail}


@dataclass(frozen=True)
class Balance:
    """The fund account's balance as the report finds it."""

    fen: int
    source: str  #: "bal" (a checked BAL file plus the journal since) or "journal"
    bal_file: str | None = None
    bal_fen: int | None = None  #: the figure in the BAL file
    since_fen: int = 0  #: net transfers journaled after the BAL file was made

    def as_dict(self) -> dict[str, Any]:
        return {"amount": signed_text(self.fen), "source": self.source,
                "bal_file": self.bal_file,
                "bal_amount": None if self.bal_fen is None else signed_text(self.bal_fen),
                "since_amount": signed_text(self.since_fen)}

    def describe(self) -> str:
        if self.source == "journal":
            return f"{signed_text(self.fen)} (the journal's net transfers)"
        return (f"{signed_text(self.fen)} ({self.bal_file}: {signed_text(self.bal_fen or 0)}"
                f", transfers since: {signed_text(self.since_fen)})")


@dataclass(frozen=True)
class AgreementExit:
    """One agreement in force and what keeps it from being unsigned now."""

    agreement: Agreement
    balance: Balance
    blockers: tuple[Blocker, ...]

    @property
    def ready(self) -> bool:
        return not self.blockers

    def as_dict(self) -> dict[str, Any]:
        a = self.agreement
        return {"agreement_no": a.agreement_no, "broker": a.broker, "bank": a.bank,
                "fund_acct": mask(a.fund_acct), "wallet_id": mask(a.wallet_id),
                "status": a.status, "sign_date": a.sign_date,
                "balance": self.balance.as_dict(), "ready": self.ready,
                "blockers": [b.as_dict() for b in self.blockers]}


@dataclass(frozen=True)
class Subscription:
    """An OTC.SUBSCRIBE with money not yet redeemed."""

    record: Record
    moved_fen: int
    left_fen: int

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        return {"biz_sn": r.biz_sn, "order_no": r.order_no, "product_code": r.product_code,
                "state": r.state, "trade_date": r.trade_date, "book_date": r.book_date,
                "amount": fen_text(self.moved_fen),
                "redeemed": fen_text(self.moved_fen - self.left_fen),
                "left": fen_text(self.left_fen)}


@dataclass(frozen=True)
class WalletSubscriptions:
    """A corporate wallet's subscriptions (with one broker and bank) not redeemed."""

    wallet_id: str
    broker: str
    bank: str
    subscriptions: tuple[Subscription, ...]

    @property
    def left_fen(self) -> int:
        return sum(s.left_fen for s in self.subscriptions)

    def as_dict(self) -> dict[str, Any]:
        return {"corp_wallet_id": mask(self.wallet_id), "broker": self.broker,
                "bank": self.bank, "left": fen_text(self.left_fen),
                "subscriptions": [s.as_dict() for s in self.subscriptions]}


@dataclass(frozen=True)
class ExitReport:
    generated_at: str
    today: str
    party: str | None
    agreements: tuple[AgreementExit, ...]
    subscriptions: tuple[WalletSubscriptions, ...]
    bal_files: tuple[BalFile, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ready(self) -> list[AgreementExit]:
        return [a for a in self.agreements if a.ready]

    @property
    def blocked(self) -> list[AgreementExit]:
        return [a for a in self.agreements if not a.ready]

    @property
    def exit_code(self) -> int:
        return EXIT_BLOCKED if self.blocked or self.subscriptions else EXIT_READY

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION, "generated_at": self.generated_at, "today": self.today,
            "party": self.party,
            "bal_files": [{"file": str(f.path), "broker": f.broker, "bank": f.bank,
                           "date": f.day.isoformat(), "created": f.created.isoformat()}
                          for f in self.bal_files],
            "agreements": [a.as_dict() for a in self.agreements],
            "ready": [a.agreement.agreement_no for a in self.ready],
            "subscriptions": [w.as_dict() for w in self.subscriptions],
            "summary": {"agreements": len(self.agreements), "ready": len(self.ready),
                        "blocked": len(self.blocked),
                        "unredeemed_wallets": len(self.subscriptions),
                        "unredeemed_left": fen_text(sum(w.left_fen
                                                        for w in self.subscriptions))},
            "notes": list(self.notes),
            "exit_code": self.exit_code,
        }


def _involves(party: str | None, *parties: str) -> bool:
    return party is None or party in parties


def _between(rec: Record, a: Agreement) -> bool:
    return {rec.origin, rec.receiver} == {a.broker, a.bank}


def _wallet_of(journal: Journal, rec: Record) -> str | None:
    """The wallet a record concerns: its own, or its original's (a reversal of a
    PAY.ORDER or OTC.SUBSCRIBE carries none)."""
    if rec.wallet_id is not None or rec.orig_biz_sn is None:
        return rec.wallet_id
    orig = journal.record(str(rec.orig_from), str(rec.orig_type), rec.orig_biz_sn)
    return orig.wallet_id if orig is not None else None


def open_records_by_wallet(journal: Journal) -> dict[str, list[Record]]:
    """Every record not final (PENDING, REVERSING), by the wallet it concerns."""
    found: dict[str, list[Record]] = {}
    for state in OPEN:
        for rec in journal.open_records(state):
            wallet = _wallet_of(journal, rec)
            if wallet is not None:
                found.setdefault(wallet, []).append(rec)
    return found


def queued_reversals_by_wallet(journal: Journal) -> dict[str, list[tuple[Record, int]]]:
    """The originals the gateway's reversal queue still has to reverse (QUEUED), with
    the attempts so far, by the wallet the original concerns."""
    found: dict[str, list[tuple[Record, int]]] = {}
    for rev in journal.reversals_due(float("inf")):  # every QUEUED one
        orig = journal.record(rev.origin, rev.biz_type, rev.biz_sn)
        if orig is not None and orig.wallet_id is not None:
            found.setdefault(orig.wallet_id, []).append((orig, rev.attempts))
    return found


def services_in_validity(journal: Journal, wallet: str, today: str) -> list[Record]:
    """The wallet's paid orders (paid, or still in flight) whose service has not ended
    (ServiceEnd today or later) and that are not reversed or refunded in full: §6's
    B304 "paid service still in its validity" (gateway/rules.py asks this too)."""
    running = []
    for order in journal.records_of_wallet(wallet, ("PAY.ORDER",),
                                           (records.SUCCEEDED, records.PENDING)):
        if (order.service_end or "") < today:
            continue
        acct = givebacks.account(journal, order.key)
        if acct is None or not acct.fully_given_back:
            running.append(order)
    return running


def net_transfers(journal: Journal, a: Agreement, after: float | None = None) -> int:
    """XFER.IN − XFER.OUT of the agreement's fund account and wallet between its broker
    and bank that succeeded, each less what is reversed or being given back, from the
    agreement's sign date on; only those journaled after ``after`` (seconds since the
    epoch), if given."""
    net = 0
    for rec in journal.records_of_wallet(a.wallet_id, XFERS, (records.SUCCEEDED,), after):
        if (rec.fund_acct != a.fund_acct or not _between(rec, a)
                or rec.trade_date < a.sign_date):  # an earlier agreement's transfers
            continue
        acct = givebacks.account(journal, rec.key)
        left = acct.left_fen if acct is not None else 0
        net += left if rec.biz_type == "XFER.IN" else -left
    return net


def balance_of(journal: Journal, a: Agreement, bal_files: Sequence[BalFile]) -> Balance:
    """The fund account's balance: the latest checked BAL file's figure plus the
    transfers journaled since it was made (from the second after its created time);
    else the journal's net transfers."""
    bal = latest_bal(bal_files, a.broker, a.bank)
    if bal is not None and (a.fund_acct, a.wallet_id) in bal.balances:
        # §8 writes the created time to the second (truncated): a transfer journaled
        # within that second is taken as one the file already holds
        since = net_transfers(journal, a, after=bal.created.timestamp() + 1.0)
        in_file = bal.balances[(a.fund_acct, a.wallet_id)]
        return Balance(in_file + since, "bal", bal.name, in_file, since)
    return Balance(net_transfers(journal, a), "journal")


def _describe(rec: Record) -> str:
    amount = f" {fen_text(rec.amount_fen)}" if rec.amount_fen is not None else ""
    return f"{rec.biz_type} {rec.biz_sn} from {rec.origin}{amount}"


def blockers_of(journal: Journal, a: Agreement, balance: Balance,
                open_recs: dict[str, list[Record]],
                queued: dict[str, list[tuple[Record, int]]], today: str) -> list[Blocker]:
    """What keeps ``a`` from being unsigned now, in the order the report lists it."""
    found: list[Blocker] = []
    if a.status == records.PENDING:
        found.append(Blocker(SIGN_PENDING, f"CTS.SIGN {a.sign_biz_sn} from {a.broker} is "
                             "not answered yet", {"biz_sn": a.sign_biz_sn}))
    for rec in open_recs.get(a.wallet_id, []):
        if not _between(rec, a) or (rec.biz_type == "CTS.SIGN"
                                    and rec.biz_sn == a.sign_biz_sn):
            continue
        found.append(Blocker(OPEN_RECORD, f"{_describe(rec)} is {rec.state}",
                             {"biz_type": rec.biz_type, "biz_sn": rec.biz_sn,
                              "origin": rec.origin, "state": rec.state,
                              "amount": (fen_text(rec.amount_fen)
                                         if rec.amount_fen is not None else None)}))
    for rec, attempts in queued.get(a.wallet_id, []):
        if _between(rec, a):
            found.append(Blocker(REVERSAL_QUEUED, f"the gateway's reversal of {_describe(rec)}"
                                 f" is queued ({attempts} attempt(s) so far)",
                                 {"biz_type": rec.biz_type, "biz_sn": rec.biz_sn,
                                  "origin": rec.origin, "attempts": attempts}))
    for order in services_in_validity(journal, a.wallet_id, today):
        if not _between(order, a):
            continue
        found.append(Blocker(SERVICE, f"PAY.ORDER {order.biz_sn} (order {order.order_no}, "
                             f"{order.product_code}) runs until {order.service_end} and is "
                             "not refunded in full",
                             {"biz_sn": order.biz_sn, "order_no": order.order_no,
                              "product_code": order.product_code,
                              "service_end": order.service_end, "state": order.state}))
    if balance.fen != 0:
        what = "funds left" if balance.fen > 0 else "an overdraft"
        found.append(Blocker(FUNDS, f"{what} in the fund account: {balance.describe()}",
                             {"amount": signed_text(balance.fen), "source": balance.source}))
    return found


def unredeemed(journal: Journal, party: str | None) -> list[WalletSubscriptions]:
    """Per corporate wallet (and broker and bank), the subscriptions with money not yet
    redeemed: succeeded (or still in flight) and not reversed or redeemed in full."""
    by_wallet: dict[tuple[str, str, str], list[Subscription]] = {}
    for rec in journal.records_of_types(("OTC.SUBSCRIBE",), (records.SUCCEEDED,
                                                             records.PENDING)):
        if not _involves(party, rec.origin, rec.receiver):
            continue
        acct = givebacks.account(journal, rec.key)
        if acct is None or acct.left_fen <= 0:
            continue
        key = (str(rec.wallet_id), rec.origin, rec.receiver)
        by_wallet.setdefault(key, []).append(Subscription(rec, acct.moved_fen, acct.left_fen))
    return [WalletSubscriptions(w, broker, bank, tuple(subs))
            for (w, broker, bank), subs in sorted(by_wallet.items())]


def build_report(journal: Journal, today: str, generated_at: str, party: str | None = None,
                 bal_files: Sequence[BalFile] = (), notes: Sequence[str] = ()) -> ExitReport:
    """The §11 exit report from the journal (and the checked BAL files given)."""
    in_force = [a for a in journal.agreements(active_only=True)
                if _involves(party, a.broker, a.bank)]
    open_recs = open_records_by_wallet(journal) if in_force else {}
    queued = queued_reversals_by_wallet(journal) if in_force else {}
    exits = []
    for a in in_force:
        balance = balance_of(journal, a, bal_files)
        exits.append(AgreementExit(a, balance, tuple(
            blockers_of(journal, a, balance, open_recs, queued, today))))
    used = {latest_bal(bal_files, a.broker, a.bank) for a in in_force} - {None}
    return ExitReport(generated_at, today, party, tuple(exits),
                      tuple(unredeemed(journal, party)),
                      tuple(sorted((f for f in used if f is not None), key=lambda f: f.name)),
                      tuple(notes))


# --- text -------------------------------------------------------------------------------
def as_text(report: ExitReport) -> str:
    out = [f"exit report {report.generated_at} (today {report.today})"
           + (f", counterparty {report.party}" if report.party else ", every counterparty")]
    for f in report.bal_files:
        out.append(f"balances: {f.name} (checked; made {f.created.isoformat()}) plus the "
                   "transfers journaled since")
    if not report.bal_files:
        out.append("balances: no checked BAL file: the journal's net transfers")
    out.extend(f"note: {n}" for n in report.notes)
    out.append("")
    out.append(f"agreements in force: {len(report.agreements)}; can be unsigned now: "
               f"{len(report.ready)}; blocked: {len(report.blocked)}")
    for ae in report.agreements:
        a = ae.agreement
        out.append(f"  {a.agreement_no or '(sign pending)'}  {a.broker}->{a.bank}  fund "
                   f"{mask(a.fund_acct)}  wallet {mask(a.wallet_id)}  signed {a.sign_date}  "
                   f"balance {signed_text(ae.balance.fen)}  "
                   + ("READY" if ae.ready else f"BLOCKED ({len(ae.blockers)})"))
        for b in ae.blockers:
            out.append(f"      - {b.kind}: {b.text}")
    out.append("")
    ready = [a.agreement.agreement_no or "?" for a in report.ready]
    out.append("can be unsigned now: " + (" ".join(ready) if ready else "none"))
    out.append("")
    out.append(f"corporate wallets with subscriptions not redeemed: {len(report.subscriptions)}")
    for w in report.subscriptions:
        out.append(f"  wallet {mask(w.wallet_id)}  {w.broker}->{w.bank}  left "
                   f"{fen_text(w.left_fen)}")
        for s in w.subscriptions:
            r = s.record
            out.append(f"      OTC.SUBSCRIBE {r.biz_sn} order {r.order_no} {r.product_code} "
                       f"{r.state} booked {r.book_date or '-'}: {fen_text(s.left_fen)} left of "
                       f"{fen_text(s.moved_fen)}")
    out.append("")
    if report.exit_code == EXIT_READY:
        out.append("result: nothing blocks: every agreement listed can be unsigned now "
                   "(exit 0)")
    else:
        out.append(f"result: {len(report.blocked)} agreement(s) blocked, "
                   f"{len(report.subscriptions)} corporate wallet(s) with subscriptions not "
                   f"redeemed (exit {EXIT_BLOCKED}): settle what is listed, then ask again")
    return "\n".join(out) + "\n"


# --- the command ------------------------------------------------------------------------
def known_parties(home: Path, journal: Journal) -> set[str]:
    """The registered peers, and every party of an agreement (also one removed since):
    a mistyped ``--party`` must not read as "nothing blocks"."""
    from .keystore import KeyStore, KeyStoreMissing

    known = {p for a in journal.agreements() for p in (a.broker, a.bank)}
    try:
        known.update(p.party for p in KeyStore(home / "keys").peers())
    except (KeyStoreMissing, OSError, ValueError, KeyError):
        pass  # no key store (an archive's home): the journal's parties alone
    return known


def exit_report_command(home: Path, party: str | None, as_json: bool,
                        eod_dirs: Sequence[Path] | None = None,
                        now: dt.datetime | None = None) -> int:
    """Print the report; 0 nothing blocks, 3 something does, 1 nothing reported (also
    for a ``party`` neither registered nor in any agreement: a typo).
    ``eod_dirs``: the drop folders whose accepted BAL files count (None: ``[ops]
    eod_dirs`` of gateway.toml)."""
    from .config import ConfigError
    from .config import load as load_config
    from .opsconfig import load
    from .store import StoreUnavailable, sqlite_path
    from .store.snapshot import read_snapshot

    try:
        url = load_config(home).journal_url
    except ConfigError as exc:
        print(f"gateway exit-report: {exc} (fix gateway.toml)", file=sys.stderr)
        return EXIT_FAILED
    path = sqlite_path(url, home)
    if path is not None and not path.exists():
        print(f"gateway exit-report: no journal at {path} (is --home the gateway's home?)",
              file=sys.stderr)
        return EXIT_FAILED
    if eod_dirs is None:
        try:
            eod_dirs = load(home).eod_dirs
        except ConfigError as exc:
            print(f"gateway exit-report: {exc}; fix gateway.toml or name the folders with "
                  "--eod-dir", file=sys.stderr)
            return EXIT_FAILED
    bal_files, problems = accepted_bal_files(eod_dirs)
    now = now or dt.datetime.now(CHINA)
    try:
        journal = Journal(path if path is not None else url, read_only=True, home=home)
    except StoreUnavailable as exc:
        print(f"gateway exit-report: cannot read {path or 'the PostgreSQL journal'}: {exc}",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        with read_snapshot(journal.store):  # every query sees the same moment
            if party is not None and party not in known_parties(home, journal):
                print(f"gateway exit-report: no party {party}: not a registered peer "
                      "(`gateway peer list`) and in no agreement of the journal; check "
                      "--party", file=sys.stderr)
                return EXIT_FAILED
            report = build_report(journal, now.date().isoformat(),
                                  now.isoformat(timespec="milliseconds"), party, bal_files,
                                  problems)
    finally:
        journal.close()
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(as_text(report))
    return report.exit_code
