"""PROTOCOL §11 suspend/resume (B340) and backup/restore, on a real gateway process over
loopback: real keys, real signatures, its real SQLite journal, its ops API."""
from __future__ import annotations

import datetime as dt
import json
import socket
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
