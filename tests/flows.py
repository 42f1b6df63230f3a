"""Business flows shared by the integration tests (the peers' side of §6)."""
from __future__ import annotations

from typing import Any

from conftest import BANK, BROKER
from peer import Frame, TestPeer

FUND, WALLET = "100020003000", "0071130812093028"
CORP = "0099000011112222"
#: Gateway settings for tests that time a relay out and follow its reversal across a
#: restart: a timeout after 1 s, reversal retries every 0.5-1 s.
FAST_REVERSALS: dict[str, Any] = {"relay_timeout_seconds": 1.0,
                                  "reversal_retry_initial_seconds": 0.5,
                                  "reversal_retry_max_seconds": 1.0}
REQUIRED_ON_SUCCESS = {"CTS.SIGN.REQ": ("AgreementNo",), "XFER.IN.REQ": ("BankSn", "SweepRef"),
                       "XFER.OUT.REQ": ("BankSn",), "PAY.ORDER.REQ": ("BankSn",),
                       "OTC.SUBSCRIBE.REQ": ("BankSn",)}


def answer(bank: TestPeer, result: str = "0000", **extra: str) -> Frame:
    """The bank answers the next relayed request with ``result`` and ``extra`` fields."""
    req = bank.recv()
    assert req.type.endswith(".REQ"), req.type
    fields: list[tuple[str, Any]] = [("Result", result), ("ResultText", "ok"),
                                     ("BizSn", req.body["BizSn"])]
    if result == "0000":  # §6: what a bank's success must carry, unless the test says
        sn = req.body["BizSn"]
        for name in REQUIRED_ON_SUCCESS.get(req.type, ()):
            extra.setdefault(name, {"AgreementNo": "AG", "BankSn": "BS", "SweepRef": "SW"}[name]
                             + sn)
    fields += [(k, v) for k, v in extra.items() if v is not None]
    bank.send(req.type.replace(".REQ", ".RSP"), fields, to=req.head("From"),
              ref=req.head("MsgId"))
    return req


def sign_fields(biz_sn: str, fund: str = FUND, wallet: str = WALLET, level: str = "1",
                kind: str = "PERSONAL") -> list[tuple[str, Any]]:
    return [("BizSn", biz_sn), ("FundAcct", fund), ("WalletId", wallet), ("WalletLevel", level),
            ("WalletKind", kind), ("CustName", "张三"), ("IdType", "01"),
            ("IdNo", "110101199003071234"), ("Phone", "13800138000"), ("Channel", "APP")]


def xfer(biz_sn: str, amount: str = "100.00", fund: str = FUND,
         wallet: str = WALLET) -> list[tuple[str, Any]]:
    return [("BizSn", biz_sn), ("FundAcct", fund), ("WalletId", wallet), ("Amount", amount),
            ("Ccy", "CNY")]


def pay(biz_sn: str, end: str, amount: str = "99.00") -> list[tuple[str, Any]]:
    return [("BizSn", biz_sn), ("OrderNo", "O" + biz_sn), ("WalletId", WALLET),
            ("Amount", amount), ("Ccy", "CNY"), ("ProductCode", "L2DATA"),
            ("ProductKind", "LEVEL2"), ("ServiceEnd", end)]


def otc(biz_sn: str, kind: str = "CORPORATE", wallet: str = CORP) -> list[tuple[str, Any]]:
    return [("BizSn", biz_sn), ("OrderNo", "OTC" + biz_sn), ("CorpWalletId", wallet),
            ("WalletKind", kind), ("ProductCode", "SY001"), ("Amount", "500000.00"),
            ("Ccy", "CNY")]


def call(peer: TestPeer, msg_type: str, fields: list[tuple[str, Any]], to: str = BANK,
         bank: TestPeer | None = None, result: str = "0000", encrypt: tuple[str, ...] = (),
         **extra: str) -> Frame:
    """Send a request; if ``bank`` is given it answers; return the originator's answer."""
    msg_id = peer.send(msg_type, fields, to=to, encrypt=encrypt)
    if bank is not None:
        answer(bank, result, **extra)
    return peer._answer_to(msg_id, msg_type)


def signed(bank: TestPeer, broker: TestPeer, biz_sn: str | None = None, **kw: str) -> Frame:
    """``broker`` signs the usual agreement (BizSn ``<broker>S1`` unless given; its
    AgreementNo is "AG" + the BizSn)."""
    biz_sn = biz_sn or f"{broker.party}S1"
    rsp = call(broker, "CTS.SIGN.REQ", sign_fields(biz_sn, **kw), bank=bank,
               encrypt=("CustName", "IdNo", "Phone"), AgreementNo="AG" + biz_sn)
    assert rsp.body["Result"] == "0000", rsp.body
    return rsp


def accept_gateway_logon(bank: TestPeer) -> Frame:
    """The bank side of a session the gateway dialled: answer its LOGON and KEYX, then
    echo once, so the session is surely keyed at the gateway before the test goes on."""
    logon = bank.recv("SYS.LOGON.REQ")
    bank.verify_from_gateway(logon)  # signed by the gateway's long-term key
    bank.send("SYS.LOGON.RSP", [("Result", "0000"), ("ResultText", "welcome"),
                                ("SessionId", "B1"), ("Nonce", "cd" * 16),
                                ("TradeDate", "2026-11-25")], mac=False,
              ref=logon.head("MsgId"))
    bank.answer_keyx(bank.recv("SYS.KEYX.REQ"))  # the gateway keys at once when it dialled
    assert bank.request("SYS.ECHO.REQ", [("Text", "keyed")]).body["Text"] == "keyed"
    return logon


def signed_pair(gw: Any) -> tuple[TestPeer, TestPeer]:
    """A bank and a broker session on ``gw``, with the usual agreement signed."""
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    return bank, broker
