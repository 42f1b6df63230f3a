"""Address lists, tried in turn (PROTOCOL §12), and the endpoint that dials them.

``--connect`` (sims) and a peer's registered address take ``HOST:PORT[,HOST:PORT…]``
(gateway.config.check_address_list).  :class:`AddressRing` is the sans-IO part: which
address the next attempt dials.  The rule is one: every attempt after the first goes to
the next address of the list (the last is followed by the first).  A connect refused, a
session that ended — refused, answered ``S903`` by a standby gateway, or lost — all end
in a new attempt, so each moves on; the edge's back-off between attempts is unchanged.
A list of one address dials that address every time, as before lists existed.

:class:`AddressListEndpoint` is the Twisted edge: an endpoint whose ``connect`` dials
the ring's next address (through ``endpoint_for``, which adds TLS where it applies).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from .config import check_address_list
from .logsetup import join_host_port


class AddressRing:
    """Which address of a list the next connection attempt dials."""

    def __init__(self, addresses: Sequence[tuple[str, int]]) -> None:
        if not addresses:
            raise ValueError("an address list needs at least one address")
        self.addresses = tuple(addresses)
        self._index = 0
        self._attempts = 0

    @classmethod
    def parse(cls, text: str) -> AddressRing:
        """From ``HOST:PORT[,HOST:PORT…]`` (ConfigError naming a bad element)."""
        return cls(check_address_list(text))

    @property
    def current(self) -> tuple[str, int]:
        """The address the latest attempt dialled (the first one before any)."""
        return self.addresses[self._index]

    @property
    def current_text(self) -> str:
        return join_host_port(*self.current)

    def next_attempt(self) -> tuple[str, int]:
        """The address to dial now: the first one for the first attempt, then each
        attempt the next one in turn."""
        if self._attempts:
            self._index = (self._index + 1) % len(self.addresses)
        self._attempts += 1
        return self.current

    def __len__(self) -> int:
        return len(self.addresses)


@implementer(IStreamClientEndpoint)
class AddressListEndpoint:
    """An endpoint dialling the addresses of a ring in turn.  ``on_address`` hears the
    address of each attempt (a DialOut's log lines name it)."""

    def __init__(self, ring: AddressRing, endpoint_for: Callable[[str, int], Any],
                 on_address: Callable[[str], object] | None = None) -> None:
        self.ring = ring
        self._endpoint_for = endpoint_for
        self._on_address = on_address

    def connect(self, factory: Any) -> Any:
        host, port = self.ring.next_attempt()
        if self._on_address is not None:
            self._on_address(join_host_port(host, port))
        return self._endpoint_for(host, port).connect(factory)
