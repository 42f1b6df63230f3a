"""What the gateway sent again is stored state, not re-read from the evidence log:
an answer to an earlier attempt at one of its reversals, and a late answer to a repeat it
asked again, are matched after a restart with the evidence rows gone (moved out of the
journal by retention, say).  In process (tests/inproc.py): real journal, keys and
signatures, no sockets."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inproc import Clock, Rig, fast_config

from conftest import BANK, BROKER, make_home
from flows import FUND, WALLET, sign_fields
from peer import Frame, TestPeer


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """The gateway on each store: the SQLite file, or ``[journal] url`` naming a fresh
    PostgreSQL database (tests/pg.py)."""
    home = make_home(tmp_path / "gw")
    bank = TestPeer(BANK, "BANK", home.keys[BANK], port=0)
    broker = TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0)
    config = (fast_config() if request.param == "sqlite" else
              fast_config(journal_url=request.getfixturevalue("pg_store_url")))
    r = Rig(home, config, Clock(time.time()), bank, broker)
    assert r.journal is not None and (r.journal.path is None) == (request.param != "sqlite")
    yield r
    r.close()


def _requests(frames: list[Frame], msg_type: str) -> list[Frame]:
    return [f for f in frames if f.type == msg_type]


def _signed(rig: Rig) -> None:
    """An ACTIVE agreement binds FUND and WALLET (§6 B300)."""
    rig.broker.send("CTS.SIGN.REQ", sign_fields("GTJAS0"), to=BANK,
                    encrypt=("CustName", "IdNo", "Phone"))
    req, = _requests(rig.bank.take(), "CTS.SIGN.REQ")
    rig.bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                   ("BizSn", "GTJAS0"), ("AgreementNo", "AG1")],
                  to=BROKER, ref=req.head("MsgId"))
    rig.broker.take()


def _forget_evidence(rig: Rig) -> None:
    """Every evidence row out of the journal, as if archived."""
    assert rig.journal is not None
    rig.journal.close()
    if rig.config.journal_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(rig.config.journal_url) as pg:
            pg.execute("DELETE FROM message")
    else:
        db = sqlite3.connect(rig.journal_path)
        db.execute("DELETE FROM message")
        db.commit()
        db.close()
    rig.journal = None
    rig.start()


def _state(rig: Rig, key: tuple[str, str, str]) -> Any:
    assert rig.journal is not None
    rec = rig.journal.store.records.get(key)
    return rec.state if rec else None


def test_an_answer_to_an_earlier_reversal_attempt_counts_without_the_evidence(
        rig: Rig) -> None:
    _signed(rig)
    rig.broker.send("XFER.OUT.REQ", [("BizSn", "GTJAT1"), ("FundAcct", FUND),
                                     ("WalletId", WALLET), ("Amount", "10.00"), ("Ccy", "CNY")],
                    to=BANK)
    assert _requests(rig.bank.take(), "XFER.OUT.REQ")
    attempts: list[Frame] = []
    for _ in range(6):  # the relay times out; the reversal is sent, then sent again
        rig.clock.advance(2.5)
        rig.tick()
        attempts += _requests(rig.bank.take(), "XFER.REVERSE.REQ")
    assert len(attempts) >= 2 and len({a.head("MsgId") for a in attempts}) == len(attempts)
    key = (BROKER, "XFER.OUT", "GTJAT1")
    assert _state(rig, key) == "REVERSING"
    _forget_evidence(rig)
    first = attempts[0]
    rig.bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                       ("BizSn", first.body["BizSn"])], to="GW01",
                  ref=first.head("MsgId"))
    assert rig.journal is not None
    rev = rig.journal.store.reversals.of(key)
    assert rev is not None and rev.state == "DONE" and rev.result == "0000"
    assert _state(rig, key) == "REVERSED"


def test_a_late_answer_to_a_repeat_asked_again_settles_without_the_evidence(
        rig: Rig) -> None:
    fields = sign_fields("GTJAS8")
    rig.broker.send("CTS.SIGN.REQ", fields, to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    assert _requests(rig.bank.take(), "CTS.SIGN.REQ")
    rig.clock.advance(2.5)
    rig.tick()  # B331: the sign's outcome is unknown
    again = rig.broker.send("CTS.SIGN.REQ", fields, to=BANK,
                            encrypt=("CustName", "IdNo", "Phone"))
    asked = _requests(rig.bank.take(), "CTS.SIGN.REQ")
    assert [a.head("MsgId") for a in asked] == [again]
    rig.clock.advance(2.5)
    rig.tick()
    rig.broker.take()
    key = (BROKER, "CTS.SIGN", "GTJAS8")
    assert _state(rig, key) == "PENDING"
    _forget_evidence(rig)
    rig.bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "late"),
                                   ("BizSn", "GTJAS8"), ("AgreementNo", "AG8")],
                  to=BROKER, ref=again)
    assert _state(rig, key) == "SUCCEEDED"
    assert not _requests(rig.broker.take(), "CTS.SIGN.RSP")  # journaled, not relayed


def test_one_read_with_a_request_its_repeat_and_a_replay_is_judged_in_order(
        rig: Rig) -> None:
    """The journal reads of a turn's frames are asked ahead together (one round trip
    on PostgreSQL): a request and its repeat (same BizSn, new MsgId) and a replay of
    the first MsgId, all in one read, must still be judged as if one by one — the
    request relayed once, the repeat answered as such, the replay refused E204."""
    _signed(rig)
    fields = [("BizSn", "GTJAT9"), ("FundAcct", FUND), ("WalletId", WALLET),
              ("Amount", "10.00"), ("Ccy", "CNY")]
    peer = rig.broker.peer
    first_id, first = peer.build("XFER.IN.REQ", fields, to=BANK)
    _, again = peer.build("XFER.IN.REQ", fields, to=BANK)
    rig.broker.feed(peer.frame(first) + peer.frame(again) + peer.frame(first))
    relayed = _requests(rig.bank.take(), "XFER.IN.REQ")
    assert len(relayed) == 1
    answers = rig.broker.take()
    assert [f.body.get("Code") for f in answers if f.type == "SYS.ERROR"] == ["E204"]
    rig.bank.send("XFER.IN.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                  ("BizSn", "GTJAT9"), ("BankSn", "B9"), ("SweepRef", "S9")],
                  to=BROKER, ref=relayed[0].head("MsgId"))
    answered = [f for f in rig.broker.take() if f.type == "XFER.IN.RSP"]
    assert answered and all(f.body["Result"] == "0000" for f in answered)
    assert _state(rig, (BROKER, "XFER.IN", "GTJAT9")) == "SUCCEEDED"
    assert rig.bank.take() == []  # nothing relayed twice
