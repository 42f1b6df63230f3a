"""A real reactor driving gateway.store_pg.committer.TurnCommitter against PostgreSQL.

Run in a subprocess by tests/test_pg_commit.py (a reactor runs once per process):
``python tests/pgturns.py URL`` prints one JSON object describing what happened.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import psycopg
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater

from gateway.store_pg.committer import Statement, TurnCommitter
from gateway.store_pg.leasedb import Fenced, acquire

reactor: Any = _reactor


def alert(subject: str) -> tuple[Statement, ...]:
    return (Statement("INSERT INTO alert (at, kind, severity, subject, text)"
                      " VALUES (1, 'k', 'warning', %s, 't')", (subject,)),)


@inlineCallbacks
def scenario(url: str, out: dict[str, Any]) -> Any:
    admin = psycopg.connect(url, autocommit=True)
    grant = acquire(admin, "A", 60.0)
    committer = TurnCommitter(lambda: psycopg.connect(url), reactor.callFromThread)
    events: list[str] = out.setdefault("events", [])

    def track(d: Deferred[None], name: str) -> Deferred[None]:
        d.addCallbacks(lambda _: events.append(f"{name} committed"),
                       lambda f: events.append(f"{name} failed {f.type.__name__}"))
        return d

    ticks = [0]
    loop = LoopingCall(lambda: ticks.__setitem__(0, ticks[0] + 1))
    loop.start(0.005)

    yield track(committer.submit(grant, alert("t1")), "t1")

    # another session holds the lease row: the fence of the next commit waits for it
    blocker = psycopg.connect(url)
    blocker.execute("SELECT 1 FROM lease FOR UPDATE")
    pending = [track(committer.submit(grant, alert(f"t{n}")), f"t{n}") for n in (2, 3, 4)]
    before = ticks[0]
    while ticks[0] < before + 10:  # the reactor keeps turning while the commit waits
        yield deferLater(reactor, 0.005, lambda: None)
    out["ticks_while_blocked"] = ticks[0] - before
    out["done_while_blocked"] = [d.called for d in pending]
    blocker.commit()
    yield gatherResults(pending)

    # a unit that fails, merged with a good one: retried one by one
    blocker.execute("SELECT 1 FROM lease FOR UPDATE")
    wait = committer.submit(grant, alert("t5"))  # waits on the lock; the next two queue
    bad = track(committer.submit(grant, (Statement(
        "INSERT INTO alert (id, at, kind, severity, subject, text)"
        " VALUES (1, 1, 'k', 'warning', 'dup', 't')"),)), "dup")
    good = track(committer.submit(grant, alert("t6")), "t6")
    yield deferLater(reactor, 0.05, lambda: None)
    blocker.commit()
    yield wait
    yield bad.addErrback(lambda _: None)
    yield good

    # a standby takes the lease over: the old holder's next commit is fenced
    admin.execute("UPDATE lease SET expires_at = clock_timestamp() - interval '1 second'")
    out["takeover_epoch"] = acquire(admin, "B", 60.0).epoch  # type: ignore[union-attr]
    stale = track(committer.submit(grant, alert("t7")), "t7")
    yield stale.addErrback(lambda f: f.trap(Fenced))
    seen = committer.call(lambda conn: conn.execute(
        "SELECT subject FROM alert ORDER BY id").fetchall())
    out["alerts"] = [r[0] for r in (yield seen)]
    out["transactions"] = committer.stats.transactions
    out["units"] = committer.stats.units
    out["split"] = committer.stats.split
    yield committer.close()
    loop.stop()
    blocker.close()
    admin.close()


def main(url: str) -> None:
    out: dict[str, Any] = {}

    def run() -> None:
        d = scenario(url, out)
        d.addErrback(lambda f: out.__setitem__("error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
