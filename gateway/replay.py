"""Replay and clock-skew defence (PROTOCOL §5)."""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

from gateway.errors import ReplayedMsgId, TimeSkew


class ReplayStore(Protocol):
    """Remembers (sender, MsgId) pairs."""

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        """Record the pair; return False if it was already seen."""
        ...


class MemoryReplayStore:
    """In-memory replay store (tests, single process)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        """Record the pair; return False if it was already seen."""
        key = (sender, msg_id)
        if key in self._seen:
            return False
        self._seen[key] = seen_at
        return True

    def forget_before(self, cutoff: float) -> None:
        """Drop entries seen before ``cutoff``."""
        self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}


def check_replay(store: ReplayStore, sender: str, msg_id: str, now: float) -> None:
    """Raise ReplayedMsgId if ``msg_id`` was already seen from ``sender``."""
    if not store.remember(sender, msg_id, now):
        raise ReplayedMsgId(ref_msg_id=msg_id)


def check_skew(msg_time: str, now: float, max_skew_seconds: float) -> None:
    """Raise TimeSkew if ``msg_time`` is unparsable, naive or too far from ``now``."""
    try:
        t = datetime.fromisoformat(msg_time)
    except (TypeError, ValueError):
        raise TimeSkew("message time is not a valid ISO-8601 time") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise TimeSkew("message time has no UTC offset")
    if abs(t.timestamp() - now) > max_skew_seconds:
        raise TimeSkew()
