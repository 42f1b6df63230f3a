"""PROTOCOL §11 suspend/resume (B340) and backup/restore, on a real gateway process over
loopback: real keys, real signatures, its real SQLite journal, its ops API."""
from __future__ import annotations

import datetime as dt
import json
import socket
import time
from typing import Any

import pytest
from test_ops import gateway_cmd, http_get, metrics_of, status_of, token_of, write_toml

from conftest import BANK, BROKER, GatewayHome, RunningGateway
from flows import CORP, WALLET, call, otc, pay, sign_fields, signed, xfer
from peer import TestPeer

GW = "GW01"
FUND2, WALLET2 = "100020003999", "0071130812099999"


# --- helpers --------------------------------------------------------------------------
def post(gw: RunningGateway, path: str, fields: dict[str, Any] | None = None,
         token: str | None = "") -> tuple[int, dict[str, Any] | bytes]:
    """POST to the ops API (token "" = the home's token, None = no header)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gw.ops_port, timeout=10)
    token = token_of(gw.home) if token == "" else token
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        conn.request("POST", path, body=json.dumps(fields or {}).encode(), headers=headers)
        rsp = conn.getresponse()
        body = rsp.read()
    finally:
        conn.close()
    try:
        return rsp.status, json.loads(body)
    except ValueError:
        return rsp.status, body


def not_relayed(bank: TestPeer, timeout: float = 0.6) -> None:
    with pytest.raises(TimeoutError):
        bank.recv(timeout=timeout)


def result(rsp: Any) -> str:
    return str(rsp.body["Result"])


def end_date(days: int) -> str:
    return (dt.date.today() + dt.timedelta(days=days)).isoformat()


def refund(sn: str, osn: str, amount: str) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("OrigBizSn", osn), ("Amount", amount)]


def redeem(sn: str, osn: str, amount: str) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("OrigBizSn", osn), ("CorpWalletId", CORP), ("Amount", amount)]


def reverse(sn: str, otype: str, osn: str, amount: str) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("OrigType", otype), ("OrigFrom", BROKER), ("OrigBizSn", osn),
            ("Amount", amount)]


def unsign(sn: str, fund: str, wallet: str, agreement: str) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("FundAcct", fund), ("WalletId", wallet), ("AgreementNo", agreement)]


def new_business(broker: TestPeer, n: str) -> dict[str, str]:
    """The four §11 types that bring new business, each sent once: their answers."""
    return {
        "CTS.SIGN": result(call(broker, "CTS.SIGN.REQ",
                                sign_fields(f"GTJAS{n}", fund="10002000770" + n,
                                            wallet="007113081209770" + n),
                                encrypt=("CustName", "IdNo", "Phone"))),
        "XFER.IN": result(call(broker, "XFER.IN.REQ", xfer(f"GTJAI{n}"))),
        "PAY.ORDER": result(call(broker, "PAY.ORDER.REQ", pay(f"GTJAP{n}", end_date(30)))),
        "OTC.SUBSCRIBE": result(call(broker, "OTC.SUBSCRIBE.REQ", otc(f"GTJAO{n}"))),
    }


def fixed_ops_port(home: GatewayHome, **gateway: Any) -> int:
    """Name a free port as [ops] listen in gateway.toml (the CLI asks the gateway there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    write_toml(home, gateway=gateway or None, ops={"listen": f"127.0.0.1:{port}"})
    return port


# --- B340: what is refused, what still flows, in which order -------------------------------
def test_a_suspended_bank_gets_b340_for_new_business_and_the_rest_still_flows(
        day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    signed(bank, broker, "GTJAS2", fund=FUND2, wallet=WALLET2)
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI1", "300.00"), bank=bank)) == "0000"
    first_in = call(broker, "XFER.IN.REQ", xfer("GTJAI2", "50.00"), bank=bank)
    assert result(call(broker, "PAY.ORDER.REQ", pay("GTJAP1", end_date(30)), bank=bank)) \
        == "0000"
    assert result(call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO1"), bank=bank)) == "0000"

    code, body = post(gw, "/api/suspend", {"party": BANK, "reason": "CCB leaves the platform"})
    assert code == 200, body
    assert isinstance(body, dict) and body["changed"] is True
    assert [(s["party"], s["reason"]) for s in body["suspensions"]] == \
        [(BANK, "CCB leaves the platform")]
    gw.wait_for_log(r"business suspended with CCB: CCB leaves the platform")

    # new business with the bank: B340 from the gateway, nothing relayed
    refused = new_business(broker, "9")
    assert refused == dict.fromkeys(refused, "B340"), refused
    not_relayed(bank)
    rsp = call(broker, "XFER.IN.REQ", xfer("GTJAI3"))
    assert rsp.head("From") == GW and "CCB leaves the platform" in rsp.body["ResultText"]
    gw.wait_for_log(r"refused XFER\.IN\.REQ .* from GTJA: B340")
    # a repeat of an earlier request gets its first answer; a refused one B340 again
    assert call(broker, "XFER.IN.REQ", xfer("GTJAI2", "50.00")).body == first_in.body
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI3"))) == "B340"
    # §11 order: the trade date (B320) and the BizSn's family (B312) come first
    msg_id = broker.send("XFER.IN.REQ", xfer("GTJAI4"), to=BANK, trade_date="2020-01-02")
    assert result(broker._answer_to(msg_id, "XFER.IN.REQ")) == "B320"
    # what lets clients leave still flows, relayed to the suspended bank
    assert result(call(broker, "XFER.OUT.REQ", xfer("GTJAU1", "100.00"), bank=bank)) == "0000"
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAU1", "1.00"))) == "B312"
    assert result(call(broker, "PAY.REFUND.REQ", refund("GTJAF1", "GTJAP1", "99.00"),
                       bank=bank)) == "0000"
    assert result(call(broker, "OTC.REDEEM.REQ", redeem("GTJAR1", "GTJAO1", "100.00"),
                       bank=bank)) == "0000"
    assert result(call(broker, "XFER.REVERSE.REQ", reverse("GTJAV1", "XFER.IN", "GTJAI1",
                                                           "300.00"), bank=bank)) == "0000"
    assert result(call(broker, "CTS.UNSIGN.REQ", unsign("GTJAN1", FUND2, WALLET2, "AGGTJAS2"),
                       bank=bank)) == "0000"
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", "GTJAI1"), ("OrigType", "XFER.IN")], to=GW)
    assert q.records("Record")[0]["Status"] == "REVERSED"
    assert result(call(broker, "CTS.QUERY.REQ", [("WalletId", WALLET)], to=GW)) == "0000"
    # the bank's own transfers towards the broker: XFER.IN refused, XFER.OUT relayed
    assert result(call(bank, "XFER.IN.REQ", xfer("CCBI1"), to=BROKER)) == "B340"
    assert result(call(bank, "XFER.OUT.REQ", xfer("CCBO1", "10.00"), to=BROKER,
                       bank=broker)) == "0000"
    # the gateway's own reversal of a transfer that timed out still reaches the bank
    broker.send("XFER.OUT.REQ", xfer("GTJAU2", "10.00"), to=BANK)
    bank.recv("XFER.OUT.REQ")  # held: no answer
    assert result(broker.recv("XFER.OUT.RSP", timeout=5)) == "B330"
    rev = bank.recv("XFER.REVERSE.REQ", timeout=5)
    assert rev.head("From") == GW and rev.body["OrigBizSn"] == "GTJAU2"

    status = status_of(gw)
    assert [s["party"] for s in status["suspensions"]] == [BANK]
    assert status["suspended_parties"] == [BANK]
    metrics = metrics_of(gw)["sbdx_suspended"]
    assert metrics == {(("party", BANK),): 1.0, (("party", BROKER),): 0.0}

    code, body = post(gw, "/api/resume", {"party": BANK})
    assert code == 200 and isinstance(body, dict) and body["suspensions"] == [], body
    gw.wait_for_log(r"business resumed with CCB")
    # B340 was not journaled: the refused request, sent again, is new business now
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI3"), bank=bank)) == "0000"
    assert metrics_of(gw)["sbdx_suspended"][(("party", BANK),)] == 0.0


def test_a_suspension_survives_a_restart_until_resumed(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    code, _ = post(gw, "/api/suspend", {})  # every party
    assert code == 200
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI1"))) == "B340"
    bank.close()
    broker.close()
    assert gw.stop() == 0

    gw = start_gateway()
    gw.wait_for_log(r"business suspended \(kept from before the restart\): every party")
    assert [s["every_party"] for s in status_of(gw)["suspensions"]] == [True]
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI1"))) == "B340"
    assert result(call(bank, "XFER.IN.REQ", xfer("CCBI1"), to=BROKER)) == "B340"
    assert result(call(broker, "XFER.OUT.REQ", xfer("GTJAU1", "1.00"), bank=bank)) == "0000"
    code, body = post(gw, "/api/resume")
    assert code == 200 and isinstance(body, dict) and body["changed"] is True
    assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI1"), bank=bank)) == "0000"
    bank.close()
    broker.close()


def test_the_ops_api_needs_the_token_and_checks_what_it_is_asked(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    for token in (None, "x" * 64, token_of(gw.home)[:-1]):
        for path in ("/api/suspend", "/api/resume"):
            code, body = post(gw, path, {"party": BANK}, token=token)
            assert (code, body) == (401, b"unauthorized\n")
    assert status_of(gw)["suspensions"] == []
    assert http_get(gw.ops_port, "/api/suspend", token_of(gw.home))[0] == 405
    for fields, why in (({"party": "nobody"}, "PartyId"),
                        ({"party": "ICBC"}, "not a registered party"),
                        ({"reason": "a\nb"}, "one line"),
                        ({"party": BANK, "until": "x"}, "unknown field")):
        code, body = post(gw, "/api/suspend", fields)
        assert code == 400 and isinstance(body, dict) and why in body["error"], body
    code, body = post(gw, "/api/resume", {"reason": "x"})
    assert code == 400
    assert status_of(gw)["suspensions"] == []


# --- the suspension table (sans-IO core, a real journal file) --------------------------------
def test_suspensions_are_journaled_and_resuming_one_party_keeps_the_others(
        open_journal: Any) -> None:
    from gateway.errors import Suspended
    from gateway.suspension import SuspensionError, Suspensions

    journal = open_journal()
    now = [1000.0]
    parties = ["CCB", "GTJA", "HTSC"]
    table = Suspensions(journal, lambda: now[0], lambda: parties)
    assert table.suspend(None, "restored").changed
    now[0] = 2000.0
    assert not table.suspend(None, "restored").changed  # the first since stays
    assert table.suspend(BANK, "leaving").changed
    change = table.resume(BROKER)
    assert change.changed and "still suspended" in change.text
    want = [(BANK, "leaving", 2000.0), ("HTSC", "restored", 1000.0)]
    assert [(x.party, x.reason, x.since) for x in table.current()] == want
    with pytest.raises(SuspensionError, match="not a registered party"):
        table.suspend("ICBC", "")
    journal.flush()
    journal.close()

    journal = open_journal()  # a restart reads them back
    table = Suspensions(journal, lambda: now[0], lambda: parties)
    assert [(x.party, x.reason, x.since) for x in table.current()] == want
    for origin, receiver in (("HTSC", BANK), (BROKER, BANK), (BANK, "HTSC")):
        with pytest.raises(Suspended):
            table.check("XFER.IN", origin, receiver)
    table.check("XFER.IN", BROKER, "ICBC")  # neither suspended
    for kind in ("XFER.OUT", "XFER.REVERSE", "CTS.UNSIGN", "PAY.REFUND", "OTC.REDEEM",
                 "XFER.QUERY", "CTS.QUERY"):
        table.check(kind, "HTSC", BANK)
    assert not table.resume("ICBC").changed
    assert table.resume(None).changed and table.current() == []
    journal.flush()
    assert journal.suspensions() == []
    journal.close()


# --- the CLI, through the ops API --------------------------------------------------------
def test_cli_suspend_resume_and_status(home: GatewayHome) -> None:
    home.add_party("HTSC", "BROKER")
    port = fixed_ops_port(home)
    gw = RunningGateway(home, ops_listen=None)
    try:
        assert gw.ops_port == port
        bank = gw.peer(BANK).open_session()
        broker = gw.peer(BROKER).open_session()
        other = gw.peer("HTSC", "BROKER").open_session()
        signed(bank, broker)
        signed(bank, other, "HTSCS1", fund=FUND2, wallet=WALLET2)

        out = gateway_cmd(home, "suspend", "--reason", "restored from backup")
        assert out.returncode == 0, out.stderr
        assert "suspended: every party" in out.stdout and "restored from backup" in out.stdout
        text = gateway_cmd(home, "status")
        assert "SUSPENDED: every party since" in text.stdout, text.stdout
        data = json.loads(gateway_cmd(home, "status", "--json").stdout)
        assert data["suspended_parties"] == [BANK, BROKER, "HTSC"]

        # resume one party while every party is suspended: the others stay suspended
        out = gateway_cmd(home, "resume", "--party", BANK, "--json")
        assert out.returncode == 0, out.stderr
        left = json.loads(out.stdout)["suspensions"]
        assert [(s["party"], s["reason"]) for s in left] == \
            [(BROKER, "restored from backup"), ("HTSC", "restored from backup")]
        assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI1"))) == "B340"
        out = gateway_cmd(home, "resume", "--party", BROKER)
        assert out.returncode == 0 and "resumed: GTJA" in out.stdout, out
        assert "still suspended: HTSC" in out.stdout
        assert result(call(broker, "XFER.IN.REQ", xfer("GTJAI1"), bank=bank)) == "0000"
        assert result(call(other, "XFER.IN.REQ", xfer("HTSCI1", fund=FUND2,
                                                      wallet=WALLET2))) == "B340"
        assert "SUSPENDED: HTSC since" in gateway_cmd(home, "status").stdout

        out = gateway_cmd(home, "suspend", "--party", "ICBC")
        assert out.returncode == 1 and out.stdout == "" and out.stderr.count("\n") == 1
        assert "ICBC is not a registered party" in out.stderr, out.stderr
        out = gateway_cmd(home, "resume")
        assert out.returncode == 0 and "suspended: none" in out.stdout, out
        assert "suspended: none" in gateway_cmd(home, "status").stdout
        assert result(call(other, "XFER.IN.REQ", xfer("HTSCI1", fund=FUND2, wallet=WALLET2),
                           bank=bank)) == "0000"
        out = gateway_cmd(home, "resume")
        assert out.returncode == 0 and "nothing was suspended" in out.stdout
        for peer in (bank, broker, other):
            peer.close()
    finally:
        gw.stop()
    for args in (("suspend",), ("resume", "--party", BANK)):
        out = gateway_cmd(home, *args)
        assert out.returncode == 1 and out.stdout == "" and out.stderr.count("\n") == 1
        assert f"gateway {args[0]}: no gateway answers on 127.0.0.1:{port}" in out.stderr
        assert "is `gateway serve` running?" in out.stderr


# --- backup and restore -------------------------------------------------------------------
def _rows(db_path: Any) -> tuple[dict[tuple[str, str, str], tuple[Any, ...]],
                               set[tuple[Any, ...]]]:
    """(records, messages) of a journal file: every record (key: its MsgId, content hash,
    state and result), every message (direction, party, type, MsgId, xml)."""
    import sqlite3

    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        records = {(o, t, sn): rest for o, t, sn, *rest in db.execute(
            "SELECT origin, biz_type, biz_sn, msg_id, content_hash, state, result"
            " FROM record")}
        messages = set(db.execute("SELECT direction, party, msg_type, msg_id, xml FROM message"))
    finally:
        db.close()
    return records, messages


def test_backup_under_load_then_restore_as_the_docs_say(home: GatewayHome, tmp_path: Any
                                                       ) -> None:
    import os
    import shutil
    import sqlite3
    import stat
    import threading

    fixed_ops_port(home, relay_timeout_seconds=8)
    gw = RunningGateway(home, ops_listen=None)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    # one transfer the bank holds: in flight when the backup is taken
    broker.send("XFER.IN.REQ", xfer("GTJAH1", "7.00"), to=BANK)
    bank.recv("XFER.IN.REQ")
    answers: dict[str, dict[str, str]] = {}
    stop = threading.Event()
    failed: list[BaseException] = []

    def load() -> None:  # transfers one after the other until told to stop
        try:
            n = 0
            while not stop.is_set():
                n += 1
                kind = "XFER.IN" if n % 3 else "XFER.OUT"
                sn = f"GTJAL{n}"
                answers[sn] = call(broker, kind + ".REQ", xfer(sn, "1.00"), bank=bank).body
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failed.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    copy = tmp_path / "journal-backup.sqlite3"
    try:
        while len(answers) < 15 and not failed:
            time.sleep(0.05)
        done_before = len(answers)
        out = gateway_cmd(home, "backup", "--out", str(copy))
        done_after = len(answers)
        assert out.returncode == 0, out.stderr
        assert "every party suspended" in out.stdout
        while len(answers) < done_after + 10 and not failed:
            time.sleep(0.05)
        stop.set()
        worker.join(60)
        assert not failed and not worker.is_alive(), failed
        assert len(answers) > done_after  # business went on after the backup
        assert all(a["Result"] == "0000" for a in answers.values())
        # never replaced
        again = gateway_cmd(home, "backup", "--out", str(copy))
        assert again.returncode == 1 and again.stdout == "" and \
            again.stderr.count("\n") == 1 and "exists" in again.stderr, again
        bank.close()
        broker.close()
    finally:
        stop.set()
        worker.join(60)
        assert gw.stop() == 0
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    check = sqlite3.connect(copy)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert check.execute("SELECT party, reason FROM suspension").fetchall() == [
        ("*", check.execute("SELECT reason FROM suspension").fetchone()[0])]
    assert "restored from backup taken at 20" in check.execute(
        "SELECT reason FROM suspension").fetchone()[0]
    check.close()
    backed_records, backed_messages = _rows(copy)
    # a consistent cut: the transfers answered before the backup began are in it; those
    # sent after it ended are not; none is half there (a record without its request)
    loaded = {key[2] for key in backed_records if key[2].startswith("GTJAL")}
    assert done_before <= len(loaded) <= done_after + 1
    assert loaded == {f"GTJAL{n}" for n in range(1, len(loaded) + 1)}
    assert {r[0] for r in backed_records.values()} <= {m[3] for m in backed_messages}
    live_records, _ = _rows(home.root / "data" / "journal.sqlite3")
    assert len(live_records) > len(backed_records)

    # the restore, as docs/operations.md says: stop (done), put the file back, start
    data = home.root / "data"
    aside = tmp_path / "journal-before-restore"
    aside.mkdir()
    for side in data.glob("journal.sqlite3*"):
        shutil.move(side, aside / side.name)
    shutil.copy2(copy, data / "journal.sqlite3")
    os.chmod(data / "journal.sqlite3", 0o600)
    gw = RunningGateway(home, ops_listen=None)
    try:
        gw.wait_for_log(r"business suspended \(kept from before the restart\): every party "
                        r"since .* \(restored from backup taken at ")
        out = gateway_cmd(home, "status")
        assert "SUSPENDED: every party since" in out.stdout, out.stdout
        records, messages = _rows(data / "journal.sqlite3")
        assert backed_messages <= messages
        pending = {key[2] for key, r in backed_records.items() if r[2] == "PENDING"}
        assert "GTJAH1" in pending
        for key, backed in backed_records.items():  # as backed up; in flight: reversing
            assert records[key] == backed or (key[2] in pending and records[key][:2] ==
                                              backed[:2] and records[key][2] == "REVERSING")
        bank = gw.peer(BANK).open_session()
        broker = gw.peer(BROKER).open_session()
        # a transfer in flight when the backup was taken is PENDING in it: the restored
        # gateway reverses it as after a crash (§6), suspended or not (§11)
        reversed_now = set()
        for _ in pending:
            rev = bank.recv("XFER.REVERSE.REQ", timeout=10)
            assert rev.head("From") == GW
            reversed_now.add(rev.body["OrigBizSn"])
            bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                           ("BizSn", rev.body["BizSn"])], to=GW,
                      ref=rev.head("MsgId"))
        assert reversed_now == pending
        # what the backup holds is answered as before; what came after it is unknown
        # to it and new business: B340
        first = "GTJAL1"
        kind = "XFER.IN" if int(first[5:]) % 3 else "XFER.OUT"
        assert call(broker, kind + ".REQ", xfer(first, "1.00")).body == answers[first]
        later = max(answers, key=lambda sn: int(sn[5:]))
        assert later not in loaded
        in_later = next(sn for sn in sorted(answers, key=lambda sn: -int(sn[5:]))
                        if sn not in loaded and int(sn[5:]) % 3)
        assert result(call(broker, "XFER.IN.REQ", xfer(in_later, "1.00"))) == "B340"
        assert result(call(broker, "XFER.IN.REQ", xfer("GTJAN1"))) == "B340"
        not_relayed(bank)
        assert gateway_cmd(home, "resume").returncode == 0
        assert result(call(broker, "XFER.IN.REQ", xfer("GTJAN1"), bank=bank)) == "0000"
        bank.close()
        broker.close()
    finally:
        assert gw.stop() == 0


def test_backup_of_a_postgresql_journal_says_use_postgresqls_own_tools(
        home: GatewayHome, tmp_path: Any) -> None:
    (home.root / "gateway.toml").write_text(
        '[journal]\nurl = "postgresql://gw@db.invalid/sbdx"\n', encoding="utf-8")
    out = tmp_path / "b.sqlite3"
    result = gateway_cmd(home, "backup", "--out", str(out))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("gateway backup: the journal is in PostgreSQL ([journal] url): "
                           "back it up with PostgreSQL's own tools")
    assert "pg_dump" in line and "WAL archiving" in line and "point-in-time" in line
    assert not out.exists()
