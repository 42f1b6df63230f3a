"""What every SBDX/1 party process shares: its clock, randomness, MsgIds and dates.

The gateway (:class:`gateway.relay.Gateway`) and the reference peers
(:mod:`gateway.sim`) are both nodes; sessions ask their node for these.
"""
from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable

from .bookdate import CHINA
from .config import Config
from .journal import Journal
from .signature import Signer


class Node:
    """Clock, randomness, MsgId source and journal of one party (injected for tests)."""

    #: The Role this node announces in SYS.LOGON.REQ when it dials out.
    role = "GATEWAY"

    def __init__(self, config: Config, journal: Journal, signer: Signer,
                 clock: Callable[[], float],
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self.journal = journal
        self.signer = signer
        self._clock = clock
        self._random = random_bytes
        self._seq = itertools.count(int.from_bytes(random_bytes(3), "big"))

    @property
    def accepts_logons(self) -> bool:
        """Whether a SYS.LOGON.REQ is taken (a standby gateway of a pair says S903, §12)."""
        return True

    def now(self) -> float:
        return self._clock()

    def random_bytes(self, n: int) -> bytes:
        return self._random(n)

    def local_now(self) -> dt.datetime:
        """Now in Asia/Shanghai, the protocol's business time zone."""
        return dt.datetime.fromtimestamp(self.now(), CHINA)

    def iso_time(self) -> str:
        return self.local_now().isoformat(timespec="milliseconds")

    def trade_date(self) -> str:
        return self.local_now().date().isoformat()

    def next_msg_id(self) -> str:
        """``<party><epoch ms><6 digits>``: unique across restarts (ms clock + a counter
        from a random start).  With a lane (:meth:`msg_id_lane`, PROTOCOL §12) the six
        digits are the lane's two and the counter's last four."""
        n, lane = next(self._seq), self.msg_id_lane()
        tail = n % 10**6 if lane is None else lane * 10**4 + n % 10**4
        return f"{self.config.party}{int(self.now() * 1000):013d}{tail:06d}"

    def msg_id_lane(self) -> int | None:
        """0-99: MsgIds of this lane never equal another lane's, whatever the clocks;
        None: the six digits are all the counter's (one process speaks for the party)."""
        return None

    def flush(self, background: bool = False) -> int:
        """Commit the journal, then release what waited for it (group commit;
        ``background``: the commit may run off this thread, see Journal.flush)."""
        return self.journal.flush(background)
