"""Requests a simulated party sent and has not yet settled (PROTOCOL §6 recovery).

A request that creates a record is written here, durably, in the reactor turn that
sends it (the turn's one commit precedes the write of its frame), and leaves only
when an answer settles it.  What settles it, and what only tells us to ask again, is
:func:`judge`; docs/simulators.md ("Recovery") gives the reasoning.  The rows live in
the party's own SQLite file (the ``outbox`` table of :mod:`gateway.sim.ledger`), so a
restarted sim carries on where it stopped.  Sans-IO: the Twisted side that sends and
schedules is :class:`gateway.sim.drive.Originator`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..catalog import BODY_BY_TYPE, ENCRYPTED_FIELDS, REVERSIBLE
from ..fieldcrypto import StorageCipher
from .ledger import Ledger

#: Entry states: its last attempt is out or due (SENT); its outcome is to be read from
#: the gateway's journal with XFER.QUERY (QUERY); it was answered B330 and is being
#: reversed (REVERSING: only REVERSED or FAILED will settle it).
SENT, QUERY, REVERSING = "SENT", "QUERY", "REVERSING"
#: :func:`judge`'s verdicts (REPEAT also :func:`read_state`'s).
SETTLE, AWAIT_REVERSAL, REPEAT = "SETTLE", "AWAIT_REVERSAL", "REPEAT"
#: The Result a sim gives itself when a session closed with the request unanswered
#: (never on the wire).
LOST = "LOST"
#: XFER.QUERY states that are final (§6 States).
FINAL_STATES = ("SUCCEEDED", "FAILED", "REVERSED")


def judge(result: str, attempts: int) -> str:
    """What an answer to a request means, ``attempts`` times sent so far.

    - SETTLE: 0000 and every business refusal (B3xx) but B330/B331 are outcomes; so is
      an E-code to the only attempt (the gateway refuses a message it cannot verify or
      read before it records anything: nothing happened, and nothing will);
    - AWAIT_REVERSAL: B330, timed out and being reversed — the gateway reverses it
      durably, and the outcome is final when XFER.QUERY shows it REVERSED;
    - QUERY (read the outcome from the gateway's journal): S900 (an internal error, or
      a repeat whose record is neither answered nor in flight: "query later"), and B312
      to a repeat (a repeat carries the first content, so B312 only says the record
      exists);
    - REPEAT (send the same request again, after a pause): B331 (outcome unknown: §6
      says repeat to learn it), S901-S903 (counterparty not connected, busy, standby:
      not outcomes), an E-code to a repeat, a session lost before the answer came, and
      anything else.  A repeat is never relayed twice for a reversible type (the gateway
      answers it from the record), and is the sanctioned inquiry for the others.
    """
    if result == "0000":
        return SETTLE
    if result == "B330":
        return AWAIT_REVERSAL
    if result == "S900" or (result == "B312" and attempts > 1):
        return QUERY
    if result.startswith("B") and result != "B331":
        return SETTLE
    if result.startswith("E") and attempts == 1:
        return SETTLE
    return REPEAT


def read_state(state: str, reversing: bool, reversible: bool) -> str | None:
    """What XFER.QUERY's ``Status`` (or its ``B313``: no such record) says: a final
    state to settle with (``SUCCEEDED``/``FAILED``/``REVERSED``), REPEAT (send the
    request again: the gateway has no record of it, or holds a non-reversible one
    unanswered, which only a repeat asks the receiver about, §6), or None (look again
    later).  After a B330 neither SUCCEEDED nor "no record" is taken (§6: it is being
    reversed, and an original given back by a reversal never ends SUCCEEDED): such a
    request stays unsettled, and says so at the end."""
    if reversing and state in ("B313", "SUCCEEDED"):
        return None
    if state == "B313":
        return REPEAT
    if state in FINAL_STATES:
        return state
    if state == "PENDING" and not reversible:
        return REPEAT
    return None


@dataclass
class Entry:
    """One unsettled request: what to send again, and how far it got."""

    biz_key: str
    msg_type: str
    to: str
    body: dict[str, Any]
    secret: dict[str, str] | None
    state: str = SENT
    attempts: int = 0
    last: str = ""
    at: str = ""

    @property
    def business(self) -> str:
        return self.msg_type.rsplit(".", 1)[0]

    @property
    def biz_sn(self) -> str:
        return str(self.body["BizSn"])

    @property
    def reversible(self) -> bool:
        return self.business in REVERSIBLE

    def describe(self) -> str:
        return (f"{self.business} {self.biz_sn} ({self.state.lower()}, {self.attempts} "
                f"attempt{'' if self.attempts == 1 else 's'}, last answer "
                f"{self.last or 'none'})")


class Outbox:
    """The unsettled requests, in memory and in the ledger's ``outbox`` table."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.entries: dict[str, Entry] = {}
        rewritten = False
        for key, msg_type, to, body, secret, state, attempts, last, at in ledger.outbox_rows():
            entry = Entry(key, msg_type, to, json.loads(body), self._read_secret(key, secret),
                          state, attempts, last or "", at)
            self.entries[key] = entry
            if _move_clear_secrets(entry) or (secret and ledger.sealer is not None
                                              and not secret.startswith(StorageCipher.PREFIX)):
                self._rewrite(entry)  # kept in clear by an earlier version: seal it now
                rewritten = True
        if rewritten and ledger.sealer is not None:
            ledger.scrub()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def add(self, entry: Entry) -> None:
        self.ledger.outbox_add(entry.biz_key, entry.msg_type, entry.to,
                               json.dumps(entry.body, ensure_ascii=False),
                               self._stored_secret(entry), entry.state, entry.attempts,
                               entry.last, entry.at)
        self.entries[entry.biz_key] = entry

    def _stored_secret(self, entry: Entry) -> str | None:
        """The request's fields to encrypt (§4 client identity), sealed for the ledger."""
        if not entry.secret:
            return None
        return self.ledger.seal(json.dumps(entry.secret, ensure_ascii=False),
                                f"outbox/{entry.biz_key}")

    def _read_secret(self, key: str, stored: str | None) -> dict[str, str] | None:
        text = self.ledger.unseal(stored, f"outbox/{key}")
        return json.loads(text) if text else None

    def _rewrite(self, entry: Entry) -> None:
        self.ledger.outbox_rewrite(entry.biz_key, json.dumps(entry.body, ensure_ascii=False),
                                   self._stored_secret(entry))

    def save(self, entry: Entry) -> None:
        """Write its state, attempts and last answer."""
        self.ledger.outbox_save(entry.biz_key, entry.state, entry.attempts, entry.last)

    def remove(self, key: str) -> None:
        self.ledger.outbox_remove(key)
        self.entries.pop(key, None)


def _move_clear_secrets(entry: Entry) -> bool:
    """An entry an earlier version wrote with a §4 encrypted field (CustName) in its body
    in clear: move the value to the fields to encrypt, so a repeat sends it encrypted
    (the body keeps an empty place for it).  True if anything moved."""
    names = ENCRYPTED_FIELDS.get(BODY_BY_TYPE.get(entry.msg_type, ""), ())
    clear = {n: str(entry.body[n]) for n in names if entry.body.get(n)
             and n not in (entry.secret or {})}
    if not clear:
        return False
    entry.secret = {**(entry.secret or {}), **clear}
    entry.body.update(dict.fromkeys(clear, ""))
    return True
