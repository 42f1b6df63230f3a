"""Exporting a signed clearing file from the journal (``gateway eod export``).

The gateway writes ``<TYPE>_<GW>_<TO>_<YYYYMMDD>.txt``: the final (SUCCEEDED, FAILED,
REVERSED) journal records of that trade date it relayed to or from TO, in the order
they were journaled, mapped exactly as the reconciliation maps them — so the file
reconciles with zero discrepancies against the journal it came from: the SQLite file
or the PostgreSQL journal ``[journal] url`` names (source.py).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from gateway.keystore import KeyStore
from gateway.store import StoreUnavailable, eod_reader

from .fileformat import LAYOUTS, RECONCILED_TYPES, FileName, fen_text
from .source import JournalRef, journal_of
from .writer import write_file

#: Offset the exporter stamps times in (trading days are Asia/Shanghai, no DST).
CST = dt.timezone(dt.timedelta(hours=8))


def _text(name: str, value: object) -> str:
    if value is None:
        return ""
    if name == "Amount":
        return fen_text(int(value))  # type: ignore[call-overload]
    if name == "Time":
        return dt.datetime.fromtimestamp(float(value), CST).isoformat(  # type: ignore[arg-type]
            timespec="seconds")
    return str(value)


class AlreadyExported(Exception):
    """The file (or its ``.sig``) is already in the output folder; the message says
    what to do."""


def trade_date_now(now: dt.datetime) -> dt.date:
    """Today's trade date: the Asia/Shanghai calendar date of ``now`` (§4)."""
    return now.astimezone(CST).date()


def unfinished(home: Path, file_type: str, day: dt.date, to_party: str) -> int:
    """How many journal records the file would cover are not final yet (PENDING or
    REVERSING): the export leaves them out."""
    gateway = KeyStore(Path(home) / "keys").party
    return eod_reader(journal_of(Path(home))).unfinished(file_type, day.isoformat(), gateway,
                                                         to_party)


def journal_records(journal: JournalRef, file_type: str, day: dt.date, gateway: str,
                    to_party: str) -> Iterator[list[str]]:
    """The D fields of every final journal record the file covers, streamed."""
    names = tuple(n for n, _ in LAYOUTS[file_type])
    for row in eod_reader(journal).export_rows(file_type, day.isoformat(), gateway, to_party):
        yield [_text(n, v) for n, v in zip(names, row, strict=True)]


def export_file(home: Path, day: dt.date, file_type: str, to_party: str, out_dir: Path,
                now: dt.datetime | None = None, *, force: bool = True) -> Path:
    """Write and sign the file; return its path.  ValueError on bad arguments;
    :class:`AlreadyExported` when the file or its ``.sig`` is there and not ``force``."""
    if file_type not in RECONCILED_TYPES:
        raise ValueError(f"cannot export {file_type!r}: the journal holds XFER, SIGN, PAY "
                         "and OTC business (BAL files are written by brokers)")
    keys = KeyStore(Path(home) / "keys")
    gateway = keys.party
    if to_party == gateway:
        raise ValueError("the counterparty must be a peer, not the gateway itself")
    if keys.peer(to_party) is None:
        raise ValueError(f"{to_party} is not a registered peer")
    path = Path(out_dir) / FileName(file_type, gateway, to_party, day).text
    there = [p.name for p in (path, path.with_name(path.name + ".sig")) if p.exists()]
    if there and not force:
        raise AlreadyExported(f"{' and '.join(there)} already in {out_dir}: a signed file may "
                              "have been handed over already; to write it again in its "
                              "place, run the same command with --force")
    created = now or dt.datetime.now(CST)
    journal = journal_of(Path(home))
    if not eod_reader(journal).exists() and isinstance(journal, str):
        raise StoreUnavailable("the PostgreSQL journal has no schema yet: start a gateway "
                               "on it once (an empty database is not a day's business)")
    records = journal_records(journal, file_type, day, gateway, to_party)
    return write_file(out_dir, file_type, gateway, to_party, day, records, keys.signer(),
                      created)
