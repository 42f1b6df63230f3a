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

#: Originals whose reversal (a peer's XFER.REVERSE) an XFER file lists as ``REV`` (§8).
#: The reversal of a PAY.ORDER or OTC.SUBSCRIBE is no transfer (it has no FundAcct): no
#: file lists it; its original, REVERSED, shows Status ``R`` in the PAY or OTC file.
REVERSED_TRANSFERS = ("XFER.IN", "XFER.OUT")

#: SQL condition every journal row a file lists meets, whatever the file's TYPE: it
#: leaves out exactly the reversals of what is not a transfer.
LISTED_SQL = "(biz_type <> 'XFER.REVERSE' OR orig_type IN ({}))".format(
    ", ".join(f"'{t}'" for t in REVERSED_TRANSFERS))

_COMMON = {"BizSn": "biz_sn", "FundAcct": "fund_acct", "WalletId": "wallet_id",
           "CorpWalletId": "wallet_id", "Amount": "amount_fen", "Status": STATUS_SQL,
           "BankSn": "bank_sn", "SweepRef": "sweep_ref", "AgreementNo": "agreement_no",
           "OrderNo": "order_no", "ProductCode": "product_code", "BookDate": "book_date",
           "Time": "created_at",
           "Direction": "CASE biz_type WHEN 'XFER.IN' THEN 'IN' WHEN 'XFER.OUT' THEN 'OUT' "
                        "ELSE 'REV' END",
           "Action": "CASE biz_type WHEN 'CTS.SIGN' THEN 'SIGN' ELSE 'UNSIGN' END"}

#: Whether the file must list a journal record (``?`` = the file's writer).  A record the
#: gateway REVERSED after a relay timeout may be unknown to its receiver: the request can
#: be lost with the connection (or the gateway) before it arrives, and §6 has receivers
#: answer the reversal of an unknown original with success.  Money moved on neither
#: side, so the receiver's file may omit it; if it lists the record, it must say ``R``.
OWED_SQL = ("(state IN ({finals}) AND NOT (state = 'REVERSED' AND receiver = ?))"
            .format(finals=",".join(f"'{s}'" for s in FINAL_STATES)))


def lines_day_query(file_type: str, trade_date: str, gateway: str, from_party: str,
                    to_party: str) -> tuple[str, tuple[object, ...]]:
    """The day's journal rows a file covers as: bizsn, ``eod_line`` (the record as a D
    line without Time, schema v2), ``owed`` (the file must list it, see OWED_SQL) and
    ``final``."""
    sql, args = day_query(file_type, ("BizSn",), trade_date, gateway, from_party, to_party)
    # OWED_SQL's parameter comes first: the SELECT list precedes day_query's WHERE.
    return (sql.replace("biz_sn AS bizsn,", f"biz_sn AS bizsn, eod_line, {OWED_SQL} AS owed,", 1),
            (from_party, *args))


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
        return ("(origin IN (?, ?) AND receiver IN (?, ?) AND origin <> receiver)",
                (peers[0], peers[1], peers[0], peers[1]))
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
           f"WHERE trade_date=? AND biz_type IN ({marks}) AND {LISTED_SQL} AND {where}")
    return sql, (trade_date, *kinds, *args)
