"""PROTOCOL §6 requests the gateway answers itself: CTS.QUERY and XFER.QUERY."""
from __future__ import annotations

from typing import Any

from .errors import RESULT_TEXT
from .givebacks import fen_text
from .journal import Journal
from .message import Message


def cts_query(journal: Journal, message: Message, asker: str) -> dict[str, Any]:
    """Agreements of a fund account or a wallet, from the registry (ACTIVE and ENDED);
    only those the asker is party to (as broker or bank): one broker never sees
    another's clients."""
    found = journal.agreements(fund_acct=message.text("FundAcct"),
                               wallet_id=message.text("WalletId"))
    agreements = [
        {"AgreementNo": a.agreement_no, "FundAcct": a.fund_acct, "WalletId": a.wallet_id,
         "WalletLevel": a.wallet_level, "WalletKind": a.wallet_kind, "Status": a.status,
         "SignDate": a.sign_date, **({"EndDate": a.end_date} if a.end_date else {})}
        for a in found if a.status in ("ACTIVE", "ENDED") and a.agreement_no
        and asker in (a.broker, a.bank)
    ]
    text = f"{len(agreements)} agreement(s)"
    return {"Result": "0000", "ResultText": text, "Agreement": agreements}


def xfer_query(journal: Journal, message: Message, asker: str) -> dict[str, Any]:
    """One business record's state and amounts, from the journal.  A record the asker
    is not a party to is answered exactly like an unknown one (§6: B313, same text), so
    a query never tells one party whether another's BizSn exists."""
    origin = message.text("OrigFrom") or asker
    rec = journal.record(origin, str(message.text("OrigType")), str(message.text("BizSn")))
    if rec is None or asker not in (rec.origin, rec.receiver):
        return {"Result": "B313", "ResultText": RESULT_TEXT["B313"]}
    record: dict[str, Any] = {"OrigType": rec.biz_type, "OrigFrom": rec.origin,
                              "Status": rec.state}
    if rec.amount_fen is not None:
        record["Amount"] = fen_text(rec.amount_fen)
    for key, value in (("PeerResult", rec.result), ("BankSn", rec.bank_sn),
                       ("SweepRef", rec.sweep_ref), ("BookDate", rec.book_date)):
        if value:
            record[key] = value
    return {"Result": "0000", "ResultText": rec.state, "Record": [record]}
