"""The simulators' end-of-day files (PROTOCOL §8), signed with their own keys.

The bank writes XFER, SIGN, PAY and OTC for its business of the day with one broker;
the broker writes BAL (its clients' settlement-fund balances) for the bank.  Both are
written from the party's ledger by :func:`gateway.eod.writer.write_file`, so
``gateway eod check`` can check and reconcile them against the gateway's journal.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from ..eod.writer import write_file
from ..signature import Signer
from .bank import BankBook
from .broker import BrokerBook

BANK_TYPES = ("XFER", "SIGN", "PAY", "OTC")


def write_bank_files(book: BankBook, out_dir: Path, day: dt.date, broker: str, gateway: str,
                     signer: Signer, created: dt.datetime) -> list[Path]:
    """``<TYPE>_<BANK>_<BROKER>_<YYYYMMDD>.txt`` + ``.sig`` for the four types; the paths."""
    records = book.eod_records(day.isoformat(), broker, gateway)
    return [write_file(out_dir, file_type, book.party, broker, day, records[file_type], signer,
                       created) for file_type in BANK_TYPES]


def write_bal_file(book: BrokerBook, out_dir: Path, day: dt.date, bank: str, signer: Signer,
                   created: dt.datetime) -> Path:
    """``BAL_<BROKER>_<BANK>_<YYYYMMDD>.txt`` + ``.sig``: every client's balance now."""
    return write_file(out_dir, "BAL", book.party, bank, day, book.bal_records(), signer, created)
