"""How journal records appear in a clearing file (PROTOCOL §8 reconciliation), as data.

Per TYPE: which journal business types it lists, and for each D field the SQL
expression over the journal's ``record`` table that yields it.  ``Amount`` is the
integer ``amount_fen``; ``Time`` is ``created_at`` (epoch seconds, formatted by the
exporter; never compared).
"""
from __future__ import annotations

FINAL_STATES = ("SUCCEEDED", "FAILED", "REVERSED")

STATUS_SQL = ("CASE state WHEN 'SUCCEEDED' THEN 'S' WHEN 'FAILED' THEN 'F' "
              "WHEN 'REVERSED' THEN 'R' ELSE state END")

#: Journal business types each file lists.  PAY.REFUND and OTC.REDEEM are not listed:
#: the PAY and OTC layouts have no column telling them from an order/subscription.
BIZ_TYPES: dict[str, tuple[str, ...]] = {
    "XFER": ("XFER.IN", "XFER.OUT", "XFER.REVERSE"),
    "SIGN": ("CTS.SIGN", "CTS.UNSIGN"),
    "PAY": ("PAY.ORDER",),
    "OTC": ("OTC.SUBSCRIBE",),
}

_COMMON = {"BizSn": "biz_sn", "FundAcct": "fund_acct", "WalletId": "wallet_id",
           "CorpWalletId": "wallet_id", "Amount": "amount_fen", "Status": STATUS_SQL,
           "BankSn": "bank_sn", "SweepRef": "sweep_ref", "AgreementNo": "agreement_no",
           "OrderNo": "order_no", "ProductCode": "product_code", "BookDate": "book_date",
           "Time": "created_at",
           "Direction": "CASE biz_type WHEN 'XFER.IN' THEN 'IN' WHEN 'XFER.OUT' THEN 'OUT' "
                        "ELSE 'REV' END",
           "Action": "CASE biz_type WHEN 'CTS.SIGN' THEN 'SIGN' ELSE 'UNSIGN' END"}

#: Business fields §8 compares (ProductCode is not among them; Time never is).
COMPARED = ("Direction", "Action", "FundAcct", "WalletId", "CorpWalletId", "OrderNo",
            "Amount", "Status", "AgreementNo", "BookDate")
#: Compared only where both sides hold a value.
COMPARED_IF_BOTH = ("BankSn", "SweepRef")


def column(field_name: str) -> str:
    """The temp-table column of a D field."""
    return field_name.lower()


def scope(gateway: str, from_party: str, to_party: str) -> tuple[str, tuple[str, ...]]:
    """SQL condition and arguments selecting the journal records a file covers.

    Two peers: their business with each other, either direction.  One peer (the
    gateway wrote or receives the file): all that peer's relayed business.  Records
    the gateway refused itself (receiver = the gateway) were never relayed, so no
    counterparty lists them.
    """
    peers = [p for p in (from_party, to_party) if p != gateway]
    if len(peers) == 2:
        return ("((origin=? AND receiver=?) OR (origin=? AND receiver=?))",
                (peers[0], peers[1], peers[1], peers[0]))
    if len(peers) == 1:
        return "((origin=? OR receiver=?) AND receiver<>?)", (peers[0], peers[0], gateway)
    return "receiver<>?", (gateway,)


def day_query(file_type: str, fields: tuple[str, ...], trade_date: str, gateway: str,
              from_party: str, to_party: str) -> tuple[str, tuple[object, ...]]:
    """SELECT of the journal rows a file covers, as file fields plus ``final``."""
    exprs = ", ".join(f"{_COMMON[f]} AS {column(f)}" for f in fields)
    kinds = BIZ_TYPES[file_type]
    where, args = scope(gateway, from_party, to_party)
    marks = ",".join("?" for _ in kinds)
    finals = ",".join(f"'{s}'" for s in FINAL_STATES)
    sql = (f"SELECT {exprs}, state IN ({finals}) AS final FROM {{db}}record "
           f"WHERE trade_date=? AND biz_type IN ({marks}) AND {where}")
    return sql, (trade_date, *kinds, *args)
