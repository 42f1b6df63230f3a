"""The fingerprint fast path (gateway/eod/fingerprint.py), the journal's v2 schema that
feeds it, and hostile-file hardening of the exact check.

The fast path may only ever conclude "valid and fully matched"; for every file, its
outcome must be the exact check's.  The hypothesis test mutates a clean file in the
ways files go wrong and compares the two paths' reports key by key.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_eod import (
    BANK,
    BOTH_STORES,
    BROKER,
    CCB_FILES,
    DAY,
    FUND,
    GW,
    NAME,
    WALLET,
    XFER_ROWS,
    Env,
    T,
    _trailer,
    header,
    reversal_day,
    store_url,
)

from gateway.eod import check_file, fingerprint, watch_command
from gateway.eod.export import journal_records
from gateway.eod.fileformat import parse_name
from gateway.eod.report import as_dict
from gateway.eod.signing import sign_file
from gateway.journal import MIGRATIONS, Journal

JOURNAL_FILE = Path("data") / "journal.sqlite3"
#: XFER_ROWS byte-equal to the journal's lines: X4's BankSn is absent in the journal
#: (compared only where both hold one, so XFER_ROWS matches, but not byte for byte).
CLEAN_ROWS = [[*r[:6], "" if r[0] == "X4" else r[6], *r[7:]] for r in XFER_ROWS]


@pytest.fixture()
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    return Env(tmp_path, url=store_url(request))


def exact_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "available", lambda *a: False)


def prove(env: Env, path: Path):  # type: ignore[no-untyped-def]
    from gateway.eod.check import _header
    name = parse_name(path.name)
    sig = path.with_name(path.name + ".sig").read_bytes()
    with open(path, "rb") as f:
        return fingerprint.prove(env.journal, GW, name, f,
                                 env.bank.public_key, sig, _header)


# --- the fast path proves clean files ----------------------------------------------------
@BOTH_STORES
def test_clean_file_is_proved_by_fingerprint(env: Env) -> None:
    assert prove(env, env.write(CLEAN_ROWS)).matched == 4
    # X3 was reversed by the gateway and may be unknown to CCB: listed or not, clean.
    assert prove(env, env.write([r for r in CLEAN_ROWS if r[0] != "X3"])).matched == 3
    with pytest.raises(fingerprint.Declined):  # X4's BankSn: matched, not byte-equal
        prove(env, env.write(XFER_ROWS))
    report = check_file(env.home, env.write(CLEAN_ROWS))
    assert report.valid and report.exit_code == 0 and report.reconciliation.matched == 4


@BOTH_STORES
@pytest.mark.parametrize("change", ["mismatch", "missing", "extra", "duplicate", "bad_line",
                                    "bank_ref_absent", "wrong_sum"])
def test_fast_path_declines_and_exact_check_answers(
        env: Env, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    rows = [list(r) for r in CLEAN_ROWS]
    if change == "mismatch":
        rows[0][4] = "100.51"
    elif change == "missing":
        del rows[0]
    elif change == "extra":
        rows.append(["X9", "IN", FUND, WALLET, "1.00", "S", "", "", T])
    elif change == "duplicate":
        rows.append(list(rows[0]))
    elif change == "bank_ref_absent":
        rows[0][6] = ""  # compared only where both hold one: matched, but not byte-equal
    if change in ("bad_line", "wrong_sum"):
        lines = [header()] + ["D|" + "|".join(r) for r in rows]
        if change == "bad_line":
            lines[2] = lines[2].replace("|F|", "|X|")
        total = "999.99" if change == "wrong_sum" else "134.50"
        path = env.raw(NAME, lines, trailer=_trailer(lines, 4, total))
    else:
        path = env.write(rows)
    with pytest.raises(fingerprint.Declined):
        prove(env, path)
    both = as_dict(check_file(env.home, path))
    exact_only(monkeypatch)
    assert both == as_dict(check_file(env.home, path))
    if change == "bank_ref_absent":
        assert both["valid"] and both["matched"] == 4 and not both["mismatched"]
    assert not both["valid"] or both["matched"] >= 3, both  # the journal was read


MUTATIONS = st.lists(st.tuples(
    st.sampled_from(["drop", "dup", "amount", "status", "direction", "bankref", "extra",
                     "swap", "time", "wallet"]),
    st.integers(0, 3)), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MUTATIONS)
def test_fast_and_exact_paths_always_agree(mutations: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _paths_agree(Env(Path(tmp)), mutations)


def test_fast_and_exact_paths_always_agree_on_postgresql(tmp_path: Path,
                                                        pg_store_url: str) -> None:
    """As above, the journal in PostgreSQL (one database: the examples change only the
    file): the proof and the exact check's join, fed by PostgreSQL's reader, agree."""
    env = Env(tmp_path, url=pg_store_url)
    clean = check_file(env.home, env.write(CLEAN_ROWS)).reconciliation
    assert clean is not None and clean.clean and clean.matched == 4  # the journal is read

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(MUTATIONS)
    def agree(mutations: list[tuple[str, int]]) -> None:
        _paths_agree(env, mutations)

    agree()


def _paths_agree(env: Env, mutations: list[tuple[str, int]]) -> None:
    """A clean file mutated: the fast path's report (if it concludes) is the exact one."""
    rows = [list(r) for r in CLEAN_ROWS]
    for kind, i in mutations:
        if not rows:
            break
        i %= len(rows)
        if kind == "drop":
            del rows[i]
        elif kind == "dup":
            rows.append(list(rows[i]))
        elif kind == "amount":
            rows[i][4] = "1.01"
        elif kind == "status":
            rows[i][5] = {"S": "F", "F": "R", "R": "S"}[rows[i][5]]
        elif kind == "direction":
            rows[i][1] = {"IN": "OUT", "OUT": "REV", "REV": "IN"}[rows[i][1]]
        elif kind == "bankref":
            rows[i][6] = "" if rows[i][6] else "BX"
        elif kind == "extra":
            rows.append([f"Z{i}", "OUT", FUND, WALLET, "3.00", "S", "", "", T])
        elif kind == "swap":
            rows.reverse()
        elif kind == "time":
            rows[i][8] = "2026-11-25T23:00:00Z"
        elif kind == "wallet":
            rows[i][3] = "0000111122224444"
    path = env.write(rows)
    fast = as_dict(check_file(env.home, path))
    original = fingerprint.available
    fingerprint.available = lambda *a: False  # type: ignore[assignment]
    try:
        exact = as_dict(check_file(env.home, path))
    finally:
        fingerprint.available = original  # type: ignore[assignment]
    assert fast == exact


@BOTH_STORES
def test_fast_path_off_with_a_fixed_hash_seed_and_for_gateway_files(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = env.journal
    name = parse_name(NAME)
    assert fingerprint.available(name, GW, journal)
    assert not fingerprint.available(parse_name(f"XFER_{GW}_{BROKER}_20261125.txt"), GW,
                                     journal)
    assert not fingerprint.available(parse_name(f"XFER_{BANK}_{GW}_20261125.txt"), GW,
                                     journal)
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    assert not fingerprint.available(name, GW, journal)


# --- the journal's v2 schema -------------------------------------------------------------
def test_v1_journal_migrates_keeping_records_and_gains_eod_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
    db.execute("INSERT INTO record (origin, biz_type, biz_sn, receiver, msg_id, content_hash,"
               " state, trade_date, amount_fen, fund_acct, wallet_id, bank_sn, sweep_ref,"
               " response_xml, created_at, updated_at) VALUES ('GTJA','XFER.IN','X1','CCB',"
               "'M1','h','SUCCEEDED','2026-11-25',10005,?,?,'B1','S1',?,1.0,1.0)",
               (FUND, WALLET, b"<Msg>answer</Msg>"))
    db.execute("INSERT INTO record (origin, biz_type, biz_sn, receiver, msg_id, content_hash,"
               " state, trade_date, created_at, updated_at) VALUES ('GTJA','CTS.SIGN','S1',"
               "'CCB','M2','h','PENDING','2026-11-25',1.0,1.0)")
    db.close()
    journal = Journal(path)
    assert journal.schema_version == len(MIGRATIONS)
    rec = journal.record("GTJA", "XFER.IN", "X1")
    assert rec is not None and rec.amount_fen == 10005 and rec.bank_sn == "B1"
    assert rec.response_xml == b"<Msg>answer</Msg>"  # moved into table response
    sign = journal.record("GTJA", "CTS.SIGN", "S1")
    assert sign is not None and sign.response_xml is None
    journal.update_record(sign.key, 2.0, state="SUCCEEDED", response_xml=b"<Msg>ok</Msg>")
    assert journal.record(*sign.key).response_xml == b"<Msg>ok</Msg>"  # type: ignore[union-attr]
    journal.update_record(rec.key, 2.0, state="REVERSED")
    journal.flush()
    db = journal.store.uow.connection
    line, = db.execute("SELECT eod_line FROM record WHERE biz_sn='X1'").fetchone()
    assert line == f"D|X1|IN|{FUND}|{WALLET}|100.05|R|B1|S1"
    with pytest.raises(sqlite3.IntegrityError):  # (From, Type, BizSn) stays unique
        db.execute("INSERT INTO record (origin, biz_type, biz_sn, receiver, msg_id,"
                            " content_hash, state, trade_date, created_at, updated_at) VALUES"
                            " ('GTJA','XFER.IN','X1','CCB','M2','h','PENDING','2026-11-26',1,1)")
    journal.close()


@pytest.mark.parametrize("file_type", ["XFER", "SIGN", "PAY", "OTC"])
def test_journal_eod_line_is_what_export_writes(env: Env, file_type: str) -> None:
    """The stored line (schema SQL) and the exporter (mapping.py) never drift apart."""
    journal = env.home / JOURNAL_FILE
    exported = {r[0]: "D|" + "|".join(r[:-1])
                for peer in (BANK, BROKER)
                for r in journal_records(journal, file_type, DAY, GW, peer)}
    assert exported
    db = sqlite3.connect(journal)
    marks = ",".join("?" * len(exported))
    stored = dict(db.execute(f"SELECT biz_sn, eod_line FROM record WHERE biz_sn IN ({marks})",
                             tuple(exported)).fetchall())
    assert stored == exported


def test_reversed_order_and_subscription_on_both_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A day with a PAY.ORDER reversed by its originator and an OTC.SUBSCRIBE reversed by
    the gateway: the journal's stored lines of the originals say R (as the export does);
    the bank's files are proved clean by fingerprint and the exact check agrees; a file
    listing the order's reversal as a transfer is declined and both report it extra; one
    giving the reversed subscription a BookDate (unknown to the gateway) is declined
    and matched by the exact path."""
    env = reversal_day(tmp_path)
    db = sqlite3.connect(env.home / JOURNAL_FILE)
    stored = dict(db.execute("SELECT biz_sn, eod_line FROM record WHERE biz_type IN "
                             "('PAY.ORDER', 'OTC.SUBSCRIBE')").fetchall())
    db.close()
    assert stored == {"GTJAP1": f"D|GTJAP1|OGTJAP1|{WALLET}|99.00|R|L2DATA",
                      "GTJAO1": "D|GTJAO1|OTCGTJAO1|9999000011112222|500000.00|R|"}
    paths = {t: env.write(rows, t) for t, rows in CCB_FILES.items()}
    rev = ["GTJAR1", "REV", FUND, WALLET, "99.00", "S", "RVR1", "", T]
    extra = env.write([*CCB_FILES["XFER"], rev], out=tmp_path)
    booked = [[*CCB_FILES["OTC"][0][:5], "2026-11-26", T]]  # a BookDate the journal lacks
    booked_otc = env.write(booked, "OTC", out=tmp_path)
    for t, path in paths.items():
        assert prove(env, path).matched == len(CCB_FILES[t])
    for declined in (extra, booked_otc):
        with pytest.raises(fingerprint.Declined):
            prove(env, declined)
    both = {p: as_dict(check_file(env.home, p)) for p in [*paths.values(), extra, booked_otc]}
    exact_only(monkeypatch)
    assert both == {p: as_dict(check_file(env.home, p)) for p in both}
    for t, path in paths.items():
        assert both[path]["valid"] and both[path]["matched"] == len(CCB_FILES[t])
        assert [] == both[path]["missing_in_file"] == both[path]["extra_in_file"] \
            == both[path]["mismatched"]
    assert both[extra]["valid"] and both[extra]["extra_in_file"] == ["GTJAR1"]
    assert both[booked_otc]["matched"] == 1 and not both[booked_otc]["mismatched"]


# --- hostile files get a reason, never a crash -----------------------------------------
def _raw_signed(env: Env, name: str, data: bytes, *, good_sig: bool = True) -> Path:
    path = env.drop / name
    path.write_bytes(data)
    sig = sign_file(env.bank if good_sig else env.broker, path, hashlib.sha256(data).digest())
    path.with_name(name + ".sig").write_bytes(sig)
    return path


@pytest.mark.parametrize("amount", ["Infinity", "1e999999", "NaN", "-1e5000"])
def test_junk_amount_in_an_unsigned_file_is_a_legitimacy_refusal(env: Env, amount: str) -> None:
    data = (f"{header('OTC_CCB_GTJA_20261125.txt')}\n"
            f"D|X2|OR1|{WALLET}|{amount}|F||{T}\nT|1|0.00|{'0' * 64}\n").encode()
    report = check_file(env.home, _raw_signed(env, "OTC_CCB_GTJA_20261125.txt", data,
                                              good_sig=False))
    assert not report.valid and report.reason.startswith("legitimacy")
    assert report.records == 0  # nothing is reported from an unauthenticated file


def test_junk_amount_in_a_signed_file_names_the_field(env: Env) -> None:
    lines = [header(), f"D|X1|IN|{FUND}|{WALLET}|1e999999|S|||{T}"]
    body = "".join(x + "\n" for x in lines).encode()
    data = body + f"T|1|0.00|{hashlib.sha256(body).hexdigest()}\n".encode()
    report = check_file(env.home, _raw_signed(env, NAME, data))
    assert report.reason == "record: line 2, field Amount: '1e999999' is not a valid Amount"


def _write_long_line_file(env: Env, mib: int) -> Path:
    """H, one D line of ``mib`` MiB, a trailer; written and signed in 1 MiB pieces."""
    path = env.drop / NAME
    body, whole = hashlib.sha256(), hashlib.sha256()
    with open(path, "wb") as f:
        for piece in [(header() + "\nD|").encode(), *[b"A" * (1 << 20)] * mib, b"\n"]:
            f.write(piece)
            body.update(piece)
            whole.update(piece)
        trailer = f"T|1|0.00|{body.hexdigest()}\n".encode()
        f.write(trailer)
        whole.update(trailer)
    path.with_name(NAME + ".sig").write_bytes(sign_file(env.bank, path, whole.digest()))
    return path


def test_overlong_line_is_refused_in_bounded_memory(env: Env) -> None:
    path = _write_long_line_file(env, 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = check_file(env.home, path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert not report.valid and "line 2" in report.reason and "longer than" in report.reason
    assert grown_mib < 16, grown_mib  # the 64 MiB line was never held
    no_lf = _raw_signed(env, NAME, (header() + "\n" + "D|" + "B" * (1 << 20)).encode(),
                        good_sig=False)
    assert check_file(env.home, no_lf).reason.startswith("legitimacy")


def test_date_shaped_tokens_are_not_calendar_checked(env: Env) -> None:
    path = env.write([["P1", "2026-11-31", WALLET, "99.00", "S", "2026-02-30", T]], "PAY")
    report = check_file(env.home, path)
    assert report.valid, report.reason
    assert report.reconciliation.mismatched[0]["fields"] == {
        "OrderNo": {"file": "2026-11-31", "journal": "O1"}}


def test_calendar_dates_still_checked_in_date_fields(env: Env) -> None:
    rows = [list(r) for r in XFER_ROWS]
    rows[1][8] = "2026-02-30T10:00:00+08:00"
    report = check_file(env.home, env.write(rows))
    assert not report.valid and "line 3, field Time" in report.reason
    assert "calendar" in report.reason


def test_uppercase_trailer_digest_is_read(env: Env) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    body = "".join(x + "\n" for x in lines).encode()
    data = body + f"T|4|134.50|{hashlib.sha256(body).hexdigest().upper()}\n".encode()
    report = check_file(env.home, _raw_signed(env, NAME, data))
    assert report.valid and report.exit_code == 0, report.reason


@pytest.mark.parametrize(("trailer", "needle"), [
    ("T|04|134.50|{d}", "trailer count '04' is malformed"),
    ("T|4|134.5|{d}", "trailer sum '134.5' is malformed"),
    ("T|4|134.50|{d}0", "trailer digest"),
])
def test_malformed_trailer_part_is_named(env: Env, trailer: str, needle: str) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    body = "".join(x + "\n" for x in lines).encode()
    data = body + (trailer.format(d=hashlib.sha256(body).hexdigest()) + "\n").encode()
    report = check_file(env.home, _raw_signed(env, NAME, data))
    assert not report.valid and needle in report.reason, report.reason


def test_bom_and_crlf_records_get_their_own_reasons(env: Env) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    body = ("\ufeff" + "".join(x + "\n" for x in lines)).encode()
    data = body + f"T|4|134.50|{hashlib.sha256(body).hexdigest()}\n".encode()
    assert "byte-order mark" in check_file(env.home, _raw_signed(env, NAME, data)).reason
    body = (lines[0] + "\n" + "".join(x + "\r\n" for x in lines[1:])).encode()
    data = body + f"T|4|134.50|{hashlib.sha256(body).hexdigest()}\n".encode()
    reason = check_file(env.home, _raw_signed(env, NAME, data)).reason
    assert "line 2" in reason and "CRLF" in reason, reason


def test_created_must_be_a_calendar_date(env: Env) -> None:
    lines = [header().replace("2026-11-25T18", "2026-02-30T18")]
    lines += ["D|" + "|".join(r) for r in XFER_ROWS]
    body = "".join(x + "\n" for x in lines).encode()
    data = body + f"T|4|134.50|{hashlib.sha256(body).hexdigest()}\n".encode()
    assert "field Created" in check_file(env.home, _raw_signed(env, NAME, data)).reason


def test_from_and_to_the_same_party_is_a_bad_name(env: Env) -> None:
    path = env.write(XFER_ROWS, to=BANK)
    report = check_file(env.home, path)
    assert not report.valid and report.reason.startswith("name:")
    assert "same party" in report.reason


def test_negative_zero_balance_is_no_overdraft(env: Env) -> None:
    path = env.write([[FUND, WALLET, "-0.00"], [FUND + "1", WALLET, "5.00"]], "BAL",
                     BROKER, BANK, env.broker)
    report = check_file(env.home, path)
    assert report.valid and report.overdrafts == []


# --- the watcher never jams --------------------------------------------------------------
def test_watch_survives_a_failing_check_and_a_blocking_name(
        env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS)
    import gateway.eod.watch as watch

    def boom(home: Path, opened: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(watch, "check_opened", boom)
    assert watch_command(env.home, env.drop, once=True) == 2
    report = json.loads((env.drop / "rejected" / (NAME + ".report.json")).read_text())
    assert report["valid"] is False and "internal error" in report["reason"]
    monkeypatch.undo()
    (env.drop / "accepted").write_text("not a folder")
    (env.drop / "accepted.sig").write_text("x")
    env.write(XFER_ROWS)
    capsys.readouterr()
    assert watch_command(env.home, env.drop, once=True) == 1  # nothing sorted
    assert "accepted in" in capsys.readouterr().out and (env.drop / NAME).exists()
    assert path.name == NAME


@pytest.mark.parametrize("total", ["0.00", "5.00", "-0.00"])
def test_sign_file_trailer_sum_must_be_zero_on_both_paths(
        env: Env, monkeypatch: pytest.MonkeyPatch, total: str) -> None:
    """A SIGN file has no amounts: its trailer sum is 0.00 (the fast path once let any
    well-formed sum through)."""
    name = "SIGN_CCB_GTJA_20261125.txt"
    lines = [header(name), f"D|C1|SIGN|{FUND}|{WALLET}|AG1|S|{T}"]
    body = "".join(x + "\n" for x in lines).encode()
    data = body + f"T|1|{total}|{hashlib.sha256(body).hexdigest()}\n".encode()
    path = _raw_signed(env, name, data)
    fast = as_dict(check_file(env.home, path))
    exact_only(monkeypatch)
    assert fast == as_dict(check_file(env.home, path))
    if total == "0.00":
        assert fast["valid"] and fast["matched"] == 1
    else:
        assert not fast["valid"] and fast["reason"].startswith("integrity: trailer sum")


def test_overlong_line_reason_does_not_depend_on_where_blocks_end(env: Env) -> None:
    """A 100 KB line inside one 1 MiB read block gets the same reason as one that spans
    blocks."""
    long_line = "D|" + "A" * 100_000
    lines = [header(), "D|" + "|".join(CLEAN_ROWS[0]), long_line]
    body = "".join(x + "\n" for x in lines).encode()
    data = body + f"T|2|100.50|{hashlib.sha256(body).hexdigest()}\n".encode()
    report = check_file(env.home, _raw_signed(env, NAME, data))
    assert report.reason == "record: line 3, field D: line longer than 65536 bytes"
