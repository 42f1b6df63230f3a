"""Replay and clock-skew defence (PROTOCOL §5)."""
from __future__ import annotations

from datetime import datetime

import pytest

from gateway.errors import ReplayedMsgId, TimeSkew
from gateway.replay import MemoryReplayStore, check_replay, check_skew

NOW = datetime.fromisoformat("2026-11-25T09:30:00+08:00").timestamp()


def test_replay_e204() -> None:
    store = MemoryReplayStore()
    check_replay(store, "GTJA", "M1", NOW)
    check_replay(store, "CCB", "M1", NOW)  # same MsgId, other sender: fine
    check_replay(store, "GTJA", "M2", NOW)
    with pytest.raises(ReplayedMsgId) as ei:
        check_replay(store, "GTJA", "M1", NOW + 10)
    assert ei.value.code == "E204"
    assert ei.value.ref_msg_id == "M1"


@pytest.mark.parametrize("t", ["2026-11-25T09:30:00.123+08:00", "2026-11-25T01:30:00Z",
                               "2026-11-25T01:34:59.999+00:00", "2026-11-25T09:25:00+08:00"])
def test_skew_ok(t: str) -> None:
    check_skew(t, NOW, 300)


@pytest.mark.parametrize("t", ["2026-11-25T09:35:00.001+08:00",  # ahead
                               "2026-11-25T01:24:59Z",  # behind
                               "2026-11-25T09:30:00",  # naive
                               "yesterday", ""])
def test_skew_e205(t: str) -> None:
    with pytest.raises(TimeSkew) as ei:
        check_skew(t, NOW, 300)
    assert ei.value.code == "E205"
