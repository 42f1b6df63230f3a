"""The PostgreSQL store (gateway/store_pg/store.py) where it differs from SQLite: its
commits are fenced by the §12 lease, and a turn that PostgreSQL aborted never passes for
committed.  The shared contract is tests/test_store.py's, run on both stores."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

from gateway.store import StoreUnavailable  # noqa: E402
from gateway.store_pg.leasedb import Fenced, acquire  # noqa: E402
from gateway.store_pg.schema import MIGRATIONS  # noqa: E402
from gateway.store_pg.store import PgStore  # noqa: E402


@pytest.fixture
def pair(pg_store_url: str) -> Iterator[tuple[PgStore, PgStore]]:
    """Two gateways' stores on one shared journal (A active, B about to take over)."""
    a, b = PgStore(pg_store_url), PgStore(pg_store_url)
    yield a, b
    for store in (a, b):
        store.uow.connection.close()


def test_a_fenced_turn_writes_nothing_and_sends_nothing(pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    grant = acquire(a.uow.connection, "A", 30.0)
    assert grant is not None
    a.uow.grant = grant
    sent: list[str] = []
    a.seen.remember("CCB", "M1", 1.0)
    a.uow.after_commit(lambda: sent.append("M1"))
    assert a.uow.flush() == 1 and sent == ["M1"]  # ours: committed, then sent
    b.uow.connection.execute("UPDATE lease SET expires_at = clock_timestamp()")  # A stalled
    taken = acquire(b.uow.connection, "B", 30.0)
    assert taken is not None and taken.epoch == grant.epoch + 1
    b.uow.grant = taken
    a.seen.remember("CCB", "M2", 2.0)
    a.uow.after_commit(lambda: sent.append("M2"))
    with pytest.raises(Fenced, match="no longer held by A"):
        a.uow.flush()
    assert sent == ["M1"] and not a.uow.dirty
    assert b.seen.remember("CCB", "M2", 3.0)  # A's M2 was never written
    assert not b.seen.remember("CCB", "M1", 3.0)
    b.uow.flush()
    a.seen.remember("CCB", "M3", 4.0)  # A's next turn is fenced too
    with pytest.raises(Fenced):
        a.uow.flush()


def test_a_turn_the_database_aborted_is_an_error_not_a_commit(pg_store_url: str) -> None:
    """Writes are queued and sent with the next round trip: a statement the database
    refuses fails that round trip — here the COMMIT's — and so the whole turn: nothing
    of it is written and its outbox is dropped."""
    store = PgStore(pg_store_url)
    sent: list[str] = []
    store.seen.remember("CCB", "M1", 1.0)
    store.uow.write("INSERT INTO suspension (party, reason, since) VALUES (NULL, 'x', 1)")
    store.uow.after_commit(lambda: sent.append("M1"))
    with pytest.raises(psycopg.errors.NotNullViolation):
        store.uow.flush()
    assert sent == [] and store.seen.remember("CCB", "M1", 2.0)  # nothing was written
    store.uow.write("INSERT INTO suspension (party, reason, since) VALUES (NULL, 'x', 1)")
    with pytest.raises(psycopg.errors.NotNullViolation):  # a read carries it: fails there
        store.suspensions.all()
    store.uow.after_commit(lambda: sent.append("M2"))
    with pytest.raises(psycopg.errors.InFailedSqlTransaction, match="rolled back"):
        store.uow.flush()
    assert sent == [] and store.seen.remember("CCB", "M2", 3.0)
    store.close()


def test_writes_ride_with_the_next_read_and_a_failed_message_drops_its_own(
        pg_store_url: str) -> None:
    """A turn's writes wait for a statement that needs an answer and go with it in one
    round trip; a message that fails before any round trip drops its queued writes
    without a savepoint ever reaching the server, one that fails after rolls back to
    its savepoint — either way the rest of the turn commits."""
    store = PgStore(pg_store_url)
    uow = store.uow
    rounds = uow._round
    store.suspensions.put("CCB", "one", 1.0)
    store.suspensions.put("ICBC", "two", 1.0)
    assert uow._round == rounds  # nothing sent yet
    assert [p for p, _, _ in store.suspensions.all()] == ["CCB", "ICBC"]
    assert uow._round == rounds + 1  # both writes and the read: one round trip
    with pytest.raises(RuntimeError), uow.savepoint():
        store.suspensions.put("BOC", "dropped before any round trip", 1.0)
        raise RuntimeError("handler failed")
    assert uow._round == rounds + 1
    with pytest.raises(RuntimeError), uow.savepoint():
        store.suspensions.put("ABC", "rolled back on the server", 1.0)
        assert "ABC" in [p for p, _, _ in store.suspensions.all()]
        raise RuntimeError("handler failed after a read")
    with uow.savepoint():
        store.suspensions.put("CMB", "kept", 1.0)
    uow.flush()
    other = PgStore(pg_store_url)
    assert [p for p, _, _ in other.suspensions.all()] == ["CCB", "CMB", "ICBC"]
    other.close()
    store.close()


def test_an_unreachable_or_newer_journal_is_refused_saying_what_to_do(
        pg_store_url: str) -> None:
    with pytest.raises(StoreUnavailable, match=r"check \[journal\] url"):
        PgStore("postgresql:///sbdx_no_such_database?host=/nonexistent")
    store = PgStore(pg_store_url)
    store.uow.connection.execute("INSERT INTO schema_version (version) VALUES (%s)",
                                 (len(MIGRATIONS) + 1,))
    store.close()
    with pytest.raises(StoreUnavailable, match="run the newer gateway"):
        PgStore(pg_store_url)
    with pytest.raises(StoreUnavailable, match="use the gateway release that wrote it"):
        PgStore(pg_store_url, read_only=True)


def test_the_end_of_day_reader_answers_as_sqlites(pg_store_url: str, pg_url: str,
                                                   tmp_path: Path) -> None:
    """The same records in both stores: every EodQueries answer is the same, for every
    file type and every pair of writer and receiver (PROTOCOL §8)."""
    from test_store import _records

    from gateway.eod.mapping import BIZ_TYPES
    from gateway.store import eod_reader
    from gateway.store.sqlite import SqliteStore

    records = _records()
    records += [replace(r, origin="CCB", receiver="GTJA", biz_sn=r.biz_sn + "B")
                for r in records[::3]]
    records += [replace(r, receiver="GW01", biz_sn=r.biz_sn + "G") for r in records[::7]]
    for store in (SqliteStore(tmp_path / "j.sqlite3"), PgStore(pg_store_url)):
        for n, rec in enumerate(records):
            store.records.insert(rec, float(n))
        store.close()
    lite, pg = eod_reader(tmp_path / "j.sqlite3"), eod_reader(pg_store_url)
    assert pg.exists() and pg.schema_has_lines()
    day, days = "2026-11-25", 0
    for file_type in BIZ_TYPES:
        for writer, reader in (("GTJA", "CCB"), ("CCB", "GTJA"), ("GW01", "CCB"),
                               ("GTJA", "GW01")):
            args = (file_type, day, "GW01", writer, reader)
            owed = [row for batch in pg.owed_lines(*args, 7) for row in batch]
            assert sorted(owed) == sorted(
                row for batch in lite.owed_lines(*args, 7) for row in batch), args
            assert sorted(pg.optional_lines(*args, 1000)) == sorted(
                lite.optional_lines(*args, 1000)), args
            lines = sorted(row for batch in pg.day_rows(*args, 5) for row in batch)
            assert lines == sorted(row for batch in lite.day_rows(*args, 5) for row in batch)
            days += len(lines)
        for reader in ("CCB", "GTJA"):
            args4 = (file_type, day, "GW01", reader)
            assert list(pg.export_rows(*args4)) == list(lite.export_rows(*args4)), args4
            assert pg.unfinished(*args4) == lite.unfinished(*args4) > 0, args4
    assert owed and any(pg.export_rows("XFER", day, "GW01", "CCB"))
    assert days > 0
    # a journal that cannot be reached is no empty one: an export must not sign an empty
    # file, a check not report every record extra, because the server was down
    missing = eod_reader(pg_store_url.replace("/sbdx_test_", "/sbdx_nope_"))
    with pytest.raises(StoreUnavailable, match=r"\[journal\] url"):
        missing.exists()
    with pytest.raises(StoreUnavailable):
        list(missing.export_rows("XFER", day, "GW01", "CCB"))
    empty = eod_reader(pg_url)  # reachable, never migrated: no business yet
    assert not empty.exists() and list(empty.export_rows("XFER", day, "GW01", "CCB")) == []


class ThreadBackground:
    """gateway.store_pg.uow.Background as the edge gives it (gateway/committhread.py),
    with the test as the reactor: the work runs on a real thread; ``finished`` waits
    in ``arrived`` until the test delivers it (what callFromThread would do)."""

    def __init__(self, uow: object) -> None:
        self.uow = uow
        self.arrived: list[object] = []
        self.threads: list[object] = []
        self.done_calls = 0

    def submit(self, work: object, finished: object) -> None:
        import threading

        def run() -> None:
            work()  # type: ignore[operator]
            self.arrived.append(finished)

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def deliver(self) -> None:
        for thread in self.threads:
            thread.join()  # type: ignore[attr-defined]
        arrived, self.arrived = self.arrived, []
        for finished in arrived:
            finished()  # type: ignore[operator]

    def done(self) -> None:
        self.done_calls += 1
        self.uow.flush(background=True)  # type: ignore[attr-defined]


def test_a_background_commit_releases_its_turn_only_once_durable_and_in_order(
        pg_store_url: str) -> None:
    """The end-of-turn flush hands the COMMIT to another thread and returns at once;
    the turn's frames wait until the commit is durable (then the edge's ``done`` flushes
    again, which releases them), and a turn committed after it releases its own only
    after them."""
    store, other = PgStore(pg_store_url), PgStore(pg_store_url)
    background = ThreadBackground(store.uow)
    store.uow.background = background
    sent: list[str] = []
    store.suspensions.put("CCB", "turn 1", 1.0)
    store.uow.after_commit(lambda: sent.append("turn 1"))
    assert store.uow.flush(background=True) == 0 and sent == [] and store.uow.dirty
    store.suspensions.put("ICBC", "turn 2", 2.0)  # the next turn queues meanwhile
    store.uow.after_commit(lambda: sent.append("turn 2"))
    background.threads[0].join()  # type: ignore[attr-defined]
    assert [p for p, _, _ in other.suspensions.all()] == ["CCB"]  # durable, not yet sent
    assert sent == []
    assert store.uow.flush(background=True) == 1  # settles turn 1 first, then commits 2
    assert sent == ["turn 1"]
    background.deliver()  # both finished callbacks: turn 2's done flushes it out
    assert sent == ["turn 1", "turn 2"] and background.done_calls == 1
    assert not store.uow.dirty
    assert [p for p, _, _ in other.suspensions.all()] == ["CCB", "ICBC"]
    store.close()
    other.close()


def test_a_fenced_background_commit_releases_nothing_and_the_next_flush_says_so(
        pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    grant = acquire(a.uow.connection, "A", 30.0)
    assert grant is not None
    a.uow.grant = grant
    background = ThreadBackground(a.uow)
    a.uow.background = background
    b.uow.connection.execute("UPDATE lease SET expires_at = clock_timestamp()")  # A stalled
    assert acquire(b.uow.connection, "B", 30.0) is not None
    sent: list[str] = []
    a.seen.remember("CCB", "M1", 1.0)
    a.uow.after_commit(lambda: sent.append("M1"))
    a.uow.flush(background=True)
    a.seen.remember("CCB", "M2", 2.0)  # the next turn, queued meanwhile
    a.uow.after_commit(lambda: sent.append("M2"))
    with pytest.raises(Fenced, match="no longer held by A"):
        background.deliver()  # the edge's done() flushes: the failure comes out there
    assert sent == []
    a.uow.discard()  # what standing by does
    assert b.seen.remember("CCB", "M1", 3.0) and b.seen.remember("CCB", "M2", 3.0)


def test_reads_asked_ahead_are_answered_from_one_round_trip_until_a_write(
        pg_store_url: str) -> None:
    """A request's reads fetched ahead (record, same BizSn, binds) cost one round trip;
    a write after them sends the next read to the database, so it sees the write."""
    from gateway.store.model import Record

    store = PgStore(pg_store_url)
    uow = store.uow
    key = ("GTJA", "XFER.IN", "GTJA0001")
    rounds = uow._round
    store.read_ahead([("record", (key,)), ("binds", ("F1", "W1", ("GTJA", "CCB")))])
    assert uow._round == rounds + 1
    assert store.records.get(key) is None and not store.agreements.binds(
        "F1", "W1", ("GTJA", "CCB"))
    assert uow._round == rounds + 1  # both answered from what was fetched
    store.read_ahead([("record", (key,))])
    fields = {f: None for f in Record.__dataclass_fields__}
    record = Record(**{**fields, "origin": key[0], "biz_type": key[1], "biz_sn": key[2],
                       "receiver": "CCB", "msg_id": "M1", "content_hash": "h",
                       "state": "PENDING", "trade_date": "2026-12-02"})
    store.records.insert(record, 1.0)
    found = store.records.get(key)  # not the absent answer fetched before the insert
    assert found is not None and found.msg_id == "M1"
    store.close()


def test_a_round_trip_sends_the_evidence_rows_together_never_across_a_savepoint() -> None:
    """The evidence log's inserts of a round trip go as one executemany at the place of
    the first, in order — but never across a savepoint, the fence or COMMIT (a message
    rolled back to its savepoint must take its evidence with it)."""
    from gateway.store_pg.uow import Pending, _groups

    def write(sql: str) -> Pending:
        return Pending(None, sql, (sql,), batch=True)  # type: ignore[arg-type]

    log = "INSERT INTO message (at) VALUES (%s)"
    queue = [Pending(None, "BEGIN", ()), write(log), write("INSERT INTO seen_msg_id x"),  # type: ignore[arg-type]
             write("INSERT INTO record y"), write(log),
             Pending(None, "SAVEPOINT msg1", ()), write(log), write("UPDATE record z"),  # type: ignore[arg-type]
             write("UPDATE record z"), write(log), Pending(None, "COMMIT", ())]  # type: ignore[arg-type]
    groups = _groups(queue)
    assert [(len(g), g[0].sql) for g in groups] == [
        (1, "BEGIN"), (2, log), (1, "INSERT INTO seen_msg_id x"), (1, "INSERT INTO record y"),
        (1, "SAVEPOINT msg1"), (2, log), (2, "UPDATE record z"), (1, "COMMIT")]
    assert len([p for g in groups for p in g]) == len(queue)
    assert [p for g in groups for p in g if p.sql == log] == [p for p in queue if p.sql == log]


def test_msg_ids_asked_ahead_answer_the_replay_check_without_a_round_trip(
        pg_store_url: str) -> None:
    """The turn's authenticated (From, MsgId)s are asked in one round trip; each replay
    check then only queues its insert — a MsgId seen before is still a replay, and one
    that comes twice in the turn is a replay the second time."""
    store = PgStore(pg_store_url)
    assert store.seen.remember("CCB", "M1", 1.0)
    store.uow.flush()
    store.read_ahead([("seen", ("CCB", "M1")), ("seen", ("CCB", "M2")),
                      ("seen", ("GTJA", "M1"))])
    rounds = store.uow._round
    assert not store.seen.remember("CCB", "M1", 2.0)  # seen in an earlier turn
    assert store.seen.remember("CCB", "M2", 2.0)
    assert store.seen.remember("GTJA", "M1", 2.0)  # another sender's MsgId
    assert store.uow._round == rounds  # no round trip for any of them
    assert not store.seen.remember("CCB", "M2", 2.5)  # twice in one turn: a replay
    store.uow.flush()
    store.read_ahead([("seen", ("CCB", "M3"))])
    store.uow.flush()  # a turn's answers are forgotten at its flush
    assert store.seen.remember("CCB", "M3", 3.0) and not store.seen.remember("CCB", "M3", 3.0)
    store.close()
