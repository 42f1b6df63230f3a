"""``gateway journal show BIZSN [--from PARTY] [--json]`` (PROTOCOL §9).

One business record (or every record with that BizSn: different originators or types)
read from the journal, never from a running gateway: the record (type, parties,
state, result, amount, trade date, BankSn, …), what names it (its give-backs: reversals,
refunds, redemptions; the gateway's own queued reversal) and the evidence messages of
it — the request as received and as relayed, the answer as received and as relayed
(found by the record's MsgId and its answer's MsgId, probes of an index), the gateway's
last reversal attempt and its answers.  Repeats of the request and late answers are
not listed.  Evidence that ``[journal] retention_days`` moved to
``data/archive/YYYYMM.sqlite3`` (PROTOCOL §11) is found there, marked with its month.

PII is masked (docs/operations.md, "journal show"): CustName, IdNo and Phone (encrypted
on the wire, sealed at rest) are never decrypted and never shown; a FundAcct, WalletId
or CorpWalletId shows only its last 4 characters.  The journal is opened read-only.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import catalog
from .bookdate import CHINA
from .evidencearchive import EvidenceArchive
from .givebacks import GIVES_BACK, REVERSAL, account, fen_text
from .journal import Journal, Record, Reversal
from .message import parse_xml

#: Body fields shown only by their last characters.
MASKED_FIELDS = ("FundAcct", "WalletId", "CorpWalletId")
#: Characters of a masked field left visible.
VISIBLE_CHARS = 4
#: Fields never shown, whatever they hold (encrypted on the wire, sealed at rest).
SECRET_FIELDS = tuple(sorted({f for fs in catalog.ENCRYPTED_FIELDS.values() for f in fs}))
HIDDEN = "(encrypted: not shown)"
#: The business types a record can have (the §6 route table).
BUSINESS_TYPES = tuple(catalog.ROUTES)
_PARTY_ID = re.compile(r"[A-Z0-9]{2,12}")
_NS = "{urn:sbdx:1}"


def mask(value: str | None) -> str | None:
    """``6222020012345678`` -> ``************5678``; 4 characters or fewer: all masked."""
    if value is None:
        return None
    keep = VISIBLE_CHARS if len(value) > VISIBLE_CHARS else 0
    return "*" * (len(value) - keep) + value[len(value) - keep:]


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, CHINA).isoformat(timespec="milliseconds")


# --- what is read -------------------------------------------------------------------
def find_records(journal: Journal, biz_sn: str, origin: str | None) -> list[Record]:
    """The records with ``biz_sn`` (of ``origin`` only, if given).  A BizSn begins with
    its originator's PartyId (§4), so each prefix that is a PartyId is probed in the
    index; a BizSn from before that rule is found by a scan."""
    if origin is not None:
        return journal.records_with_biz_sn(biz_sn, (origin,), BUSINESS_TYPES)
    prefixes = tuple(biz_sn[:n] for n in range(2, min(12, len(biz_sn)) + 1)
                     if _PARTY_ID.fullmatch(biz_sn[:n]))
    found = journal.records_with_biz_sn(biz_sn, prefixes, BUSINESS_TYPES) if prefixes else []
    return found or journal.records_with_biz_sn(biz_sn)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One journaled message, as shown: its head, signer and masked body."""

    time: str
    direction: str
    party: str | None
    type: str | None
    msg_id: str | None
    ref_id: str | None
    session: str
    signer: str | None
    head: dict[str, str]
    body: dict[str, Any]
    #: ``YYYYMM`` when the row was moved to ``data/archive/`` (§11 retention)
    archive: str | None = None

    @classmethod
    def of(cls, row: sqlite3.Row) -> Evidence:
        head, body = _read_xml(bytes(row["xml"]))
        return cls(iso(float(row["at"])), str(row["direction"]), row["party"],
                   row["msg_type"], row["msg_id"], row["ref_id"], str(row["session"]),
                   _signer(bytes(row["envelope"])), head, body,
                   row["archive"] if "archive" in row.keys() else None)


def _signer(envelope: bytes) -> str | None:
    """The signer named by an envelope line (``SBDX1 key mac alg:signer:sig``)."""
    parts = envelope.decode("ascii", "replace").split(" ")
    sig = parts[3].split(":") if len(parts) == 4 else []
    return sig[1] if len(sig) == 3 else None


def _read_xml(xml: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """Head and body of a journaled message, PII masked; empty if it does not parse
    (a refused message is kept as it came)."""
    try:
        root = parse_xml(xml)
    except Exception:  # evidence of anything at all: show what can be read
        return {}, {}
    head_el, body_el = root.find(_NS + "Head"), root.find(_NS + "Body")
    head = {_local(c.tag): c.text or "" for c in head_el} if head_el is not None else {}
    body: dict[str, Any] = {}
    if body_el is not None and len(body_el):
        body = _fields(body_el[0])
    return head, body


def _fields(element: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for child in element:
        name = _local(child.tag)
        if len(child):  # a repeated group (CTS.QUERY.RSP records)
            out.setdefault(name, []).append(_fields(child))
        else:
            out[name] = _shown(name, child.text or "")
    return out


def _shown(name: str, value: str) -> str | None:
    if name in SECRET_FIELDS:
        return HIDDEN
    return mask(value) if name in MASKED_FIELDS else value


def _local(tag: Any) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _messages(journal: Journal, msg_id: str | None, sender: str | None,
              archive: EvidenceArchive | None) -> list[Evidence]:
    """The rows journaled under ``msg_id`` that ``sender`` sent (a MsgId is unique per
    From only): as received and as relayed on; in the journal or moved to the archive."""
    if not msg_id:
        return []
    rows = list(journal.messages(msg_id))
    if archive is not None:
        rows = _merged(rows, archive.messages(msg_id))
    shown = [Evidence.of(row) for row in rows]
    return [e for e in shown if sender is None or e.head.get("From") == sender]


def _merged(journal_rows: list[sqlite3.Row], archived: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """Journal rows and archived ones; a row in both (a move interrupted between the
    archive's commit and the journal's) once, from the journal."""
    ids = {row["id"] for row in journal_rows}
    return journal_rows + [row for row in archived if row["id"] not in ids]


def _answer_head(rec: Record) -> tuple[str | None, str | None]:
    """(MsgId, From) of the record's stored answer."""
    if rec.response_xml is None:
        return None, None
    head, _ = _read_xml(rec.response_xml)
    return head.get("MsgId"), head.get("From")


def record_view(journal: Journal, rec: Record, gateway: str | None,
                archive: EvidenceArchive | None = None) -> dict[str, Any]:
    """Everything ``journal show`` says of one record, PII masked; evidence moved out by
    ``[journal] retention_days`` is read from ``archive``."""
    answer_id, answer_from = _answer_head(rec)
    messages = _messages(journal, rec.msg_id, rec.origin, archive) + _messages(
        journal, answer_id, answer_from, archive)
    reversal = journal.reversal_of(rec.key)
    if reversal is not None and reversal.last_msg_id:
        messages += _messages(journal, reversal.last_msg_id, gateway, archive)
        answers = journal.reversal_answer_messages(reversal.receiver, reversal.last_msg_id)
        if archive is not None:
            answers = _merged(answers, archive.reversal_answer_messages(
                reversal.receiver, reversal.last_msg_id))
        messages += [Evidence.of(r) for r in answers]
    messages.sort(key=lambda e: e.time)
    return {
        "type": rec.biz_type, "biz_sn": rec.biz_sn, "from": rec.origin, "to": rec.receiver,
        "state": rec.state, "result": rec.result, "trade_date": rec.trade_date,
        "amount": fen_text(rec.amount_fen) if rec.amount_fen is not None else None,
        "msg_id": rec.msg_id, "fund_acct": mask(rec.fund_acct),
        "wallet_id": mask(rec.wallet_id), "bank_sn": rec.bank_sn, "sweep_ref": rec.sweep_ref,
        "order_no": rec.order_no, "product_code": rec.product_code,
        "service_end": rec.service_end, "book_date": rec.book_date,
        "agreement_no": rec.agreement_no,
        "original": ({"from": rec.orig_from, "type": rec.orig_type,
                      "biz_sn": rec.orig_biz_sn} if rec.orig_biz_sn else None),
        **_give_backs(journal, rec),
        "gateway_reversal": _reversal_view(reversal),
        "messages": [_evidence_view(e) for e in messages],
    }


def _give_backs(journal: Journal, rec: Record) -> dict[str, Any]:
    if rec.biz_type not in GIVES_BACK[REVERSAL]:
        return {"given_back": None, "give_backs": []}
    acct = account(journal, rec.key)
    if acct is None:
        return {"given_back": None, "give_backs": []}
    return {
        "given_back": {"moved": fen_text(acct.moved_fen), "given": fen_text(acct.given_fen),
                       "left": fen_text(acct.left_fen)},
        "give_backs": [{"type": g.biz_type, "biz_sn": g.biz_sn, "from": g.origin,
                        "to": g.receiver, "state": g.state, "result": g.result,
                        "amount": fen_text(g.amount_fen) if g.amount_fen is not None
                        else None} for g in acct.give_backs],
    }


def _reversal_view(rev: Reversal | None) -> dict[str, Any] | None:
    if rev is None:
        return None
    return {"biz_sn": rev.reversal_sn, "to": rev.receiver, "state": rev.state,
            "attempts": rev.attempts, "result": rev.result, "amount": fen_text(rev.amount_fen),
            "last_msg_id": rev.last_msg_id,
            "queued_at": iso(rev.queued_at) if rev.queued_at is not None else None}


def _evidence_view(e: Evidence) -> dict[str, Any]:
    return {"time": e.time, "direction": e.direction, "party": e.party, "type": e.type,
            "msg_id": e.msg_id, "ref_id": e.ref_id, "session": e.session,
            "signer": e.signer, "from": e.head.get("From"), "to": e.head.get("To"),
            "body": e.body, "archive": e.archive}


# --- what is printed ----------------------------------------------------------------
def render_text(views: list[dict[str, Any]]) -> str:
    return "\n\n".join(_record_text(v) for v in views) + "\n"


def _record_text(v: dict[str, Any]) -> str:
    lines = [f"{v['type']} {v['biz_sn']} from {v['from']} to {v['to']}: {v['state']}"
             f" (result {v['result'] or '-'})",
             f"  trade date {v['trade_date']}, MsgId {v['msg_id']}"]
    details = [f"{label} {v[key]}" for key, label in _DETAILS if v.get(key) is not None]
    if details:
        lines.append("  " + ", ".join(details))
    if v["original"]:
        o = v["original"]
        lines.append(f"  gives back {o['type']} {o['biz_sn']} from {o['from']}")
    if v["given_back"]:
        g = v["given_back"]
        lines.append(f"  given back {g['given']} of {g['moved']} (left {g['left']})")
    for g in v["give_backs"]:
        lines.append(f"    {g['type']} {g['biz_sn']} from {g['from']}: {g['state']} "
                     f"{g['amount'] or ''} (result {g['result'] or '-'})".rstrip())
    r = v["gateway_reversal"]
    if r:
        lines.append(f"  gateway reversal {r['biz_sn']} to {r['to']}: {r['state']}, "
                     f"{r['attempts']} attempt(s), result {r['result'] or '-'}, "
                     f"queued {r['queued_at'] or '-'}")
    lines.append(f"  messages ({len(v['messages'])}):")
    lines += [_message_text(m) for m in v["messages"]] or ["    none journaled"]
    return "\n".join(lines)


_DETAILS = (("amount", "amount"), ("fund_acct", "FundAcct"), ("wallet_id", "WalletId"),
            ("bank_sn", "BankSn"), ("sweep_ref", "SweepRef"), ("order_no", "OrderNo"),
            ("product_code", "ProductCode"), ("service_end", "ServiceEnd"),
            ("book_date", "BookDate"), ("agreement_no", "AgreementNo"))


def _message_text(m: dict[str, Any]) -> str:
    arrow = "<-" if m["direction"] == "IN" else "->"
    result = m["body"].get("Result")
    tail = f" RefId {m['ref_id']}" if m["ref_id"] else ""
    tail += f" Result {result}" if result else ""
    return (f"    {m['time']} {m['direction']:<3} {arrow} {m['party'] or '?':<8} "
            f"{m['type'] or '?'} MsgId {m['msg_id'] or '?'}{tail} session {m['session']}"
            + (f" signer {m['signer']}" if m["signer"] else "")
            + (f" (archive {m['archive']})" if m.get("archive") else ""))


def show_command(home: Path, biz_sn: str, origin: str | None, as_json: bool,
                 gateway: str | None = None) -> int:
    """Print the record(s); 1 when there is no journal or no such record."""
    path = home / "data" / "journal.sqlite3"
    if not path.exists():
        print(f"gateway journal show: no journal at {path}", file=sys.stderr)
        return 1
    try:
        journal = Journal(path, read_only=True)
    except (sqlite3.Error, ValueError) as exc:
        print(f"gateway journal show: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    archive = EvidenceArchive(path.parent / "archive")  # §11 retention's month files
    try:
        records = find_records(journal, biz_sn, origin)
        views = [record_view(journal, rec, gateway, archive) for rec in records]
    finally:
        journal.close()
    if not views:
        print(f"gateway journal show: no record {biz_sn}"
              + (f" from {origin}" if origin else ""), file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"biz_sn": biz_sn, "records": views}, ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(render_text(views))
    return 0
