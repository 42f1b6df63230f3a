"""The PostgreSQL journal's end-of-turn commits off the reactor thread (issue 21: the
group commit without blocking the reactor on the network round trip).

:class:`ReactorBackground` is the edge half of
:class:`gateway.store_pg.uow.PgUnitOfWork`'s ``background``: the commit's round trip
runs in the reactor's thread pool, its completion comes back to the reactor thread
(``callFromThread``), and ``done`` flushes again through the factory's turn path —
which runs the committed turn's after-commit actions (its frames leave now), or takes
the failure as a failed commit always is (a fenced one: stand by; any other: stop).
One commit is in flight at a time: the unit of work settles the previous one before it
submits the next.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ReactorBackground:
    """``submit(work, finished)``: ``work`` in the reactor's thread pool, then
    ``finished`` in the reactor thread; ``done()``: ``on_done`` (the turn's flush)."""

    def __init__(self, reactor: Any, on_done: Callable[[], None]) -> None:
        self._reactor = reactor
        self._on_done = on_done

    def submit(self, work: Callable[[], None], finished: Callable[[], None]) -> None:
        def run() -> None:
            try:
                work()  # (the unit of work keeps its own outcome; it never raises)
            finally:
                self._reactor.callFromThread(finished)

        self._reactor.callInThread(run)

    def done(self) -> None:
        self._on_done()
