"""Session key ring: grace window, unknown ids, rotation triggers (PROTOCOL §5.3)."""
from __future__ import annotations

import os

import pytest

from gateway.errors import UnknownKeyId
from gateway.kex import SessionKeys
from gateway.keyring import KeyRing


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def keys(kid: str) -> SessionKeys:
    return SessionKeys(kid, os.urandom(32), os.urandom(32))


def test_empty_ring() -> None:
    ring = KeyRing(Clock())
    assert ring.current is None and not ring.has_key and not ring.rotation_due
    with pytest.raises(UnknownKeyId) as ei:
        ring.for_receive("K1")
    assert ei.value.code == "E201"


def test_grace_window() -> None:
    clock = Clock()
    ring = KeyRing(clock)
    k1, k2 = keys("K1"), keys("K2")
    ring.install(k1)
    clock.t += 500
    ring.install(k2)
    assert ring.current == k2 and ring.installed_at == clock.t
    clock.t += 29.9
    assert ring.for_receive("K1") == k1
    assert ring.for_receive("K2") == k2
    clock.t += 0.2  # +30.1 s after successor
    with pytest.raises(UnknownKeyId) as ei:
        ring.for_receive("K1")
    assert ei.value.code == "E201"
    assert ring.for_receive("K2") == k2  # the newest never expires
    clock.t += 100000
    assert ring.for_receive("K2") == k2


def test_unknown_and_duplicate() -> None:
    ring = KeyRing(Clock())
    ring.install(keys("K1"))
    with pytest.raises(UnknownKeyId) as ei:
        ring.for_receive("NOPE")
    assert ei.value.code == "E201"
    with pytest.raises(ValueError):
        ring.install(keys("K1"))


def test_rotation_by_time() -> None:
    clock = Clock()
    ring = KeyRing(clock, rotate_seconds=3600)
    ring.install(keys("K1"))
    clock.t += 3599.9
    assert not ring.rotation_due
    clock.t += 0.1
    assert ring.rotation_due
    ring.install(keys("K2"))
    assert not ring.rotation_due


def test_rotation_by_count() -> None:
    ring = KeyRing(Clock(), rotate_messages=3)
    ring.install(keys("K1"))
    ring.note_message()
    ring.note_message()
    assert not ring.rotation_due
    ring.note_message()
    assert ring.rotation_due
    ring.install(keys("K2"))
    assert not ring.rotation_due
