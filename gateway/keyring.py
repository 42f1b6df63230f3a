"""Session key ring (PROTOCOL §5.3): newest key for sending, grace window on receive."""
from __future__ import annotations

from collections.abc import Callable

from gateway.errors import UnknownKeyId
from gateway.kex import SessionKeys


class KeyRing:
    """The keys of one session; replaced keys expire ``grace_seconds`` after their successor."""

    def __init__(
        self,
        clock: Callable[[], float],
        grace_seconds: float = 30.0,
        rotate_seconds: float = 3600.0,
        rotate_messages: int = 100000,
    ) -> None:
        self._clock = clock
        self.grace_seconds = grace_seconds
        self.rotate_seconds = rotate_seconds
        self.rotate_messages = rotate_messages
        self._keys: dict[str, SessionKeys] = {}
        self._expires: dict[str, float | None] = {}
        self._current: SessionKeys | None = None
        self._installed_at: float | None = None
        self._count = 0

    def __repr__(self) -> str:
        return f"KeyRing(keys={list(self._keys)!r})"

    def install(self, keys: SessionKeys) -> None:
        """Make ``keys`` the newest key; the previous newest expires after the grace period."""
        self._purge()
        if keys.key_id in self._keys:
            raise ValueError(f"key id {keys.key_id!r} already used in this session")
        now = self._clock()
        if self._current is not None:
            self._expires[self._current.key_id] = now + self.grace_seconds
        self._keys[keys.key_id] = keys
        self._expires[keys.key_id] = None
        self._current = keys
        self._installed_at = now
        self._count = 0

    @property
    def current(self) -> SessionKeys | None:
        """The newest key (for sending), or None."""
        return self._current

    @property
    def has_key(self) -> bool:
        """True once a key has been installed."""
        return self._current is not None

    @property
    def installed_at(self) -> float | None:
        """Clock time the current key was installed."""
        return self._installed_at

    def _purge(self) -> None:
        now = self._clock()
        for kid, exp in list(self._expires.items()):
            if exp is not None and now > exp:
                del self._expires[kid]
                del self._keys[kid]

    def for_receive(self, key_id: str) -> SessionKeys:
        """Return an unexpired key by id; raise UnknownKeyId otherwise."""
        self._purge()
        keys = self._keys.get(key_id)
        if keys is None:
            raise UnknownKeyId()
        return keys

    def note_message(self) -> None:
        """Count one message under the current key."""
        self._count += 1

    @property
    def rotation_due(self) -> bool:
        """True when the current key is old enough or has been used enough."""
        if self._current is None or self._installed_at is None:
            return False
        age = self._clock() - self._installed_at
        return age >= self.rotate_seconds or self._count >= self.rotate_messages
