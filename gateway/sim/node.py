"""A bank or broker node: owns its sessions to the gateway (peer side of §5),
sends requests and matches answers, and books requests the gateway relays to it."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .. import catalog
from ..config import Config
from ..errors import CounterpartyNotConnected
from ..fieldcrypto import decrypt_field
from ..journal import Journal
from ..keystore import Peer
from ..message import Message
from ..node import Node
from ..session import Session
from ..signature import Signer
from ..verification import Verified

log = logging.getLogger(__name__)

Answer = Callable[[Message], None]
#: Told that the session a request went out on closed before its answer came.
Lost = Callable[[], None]


class Book(Protocol):
    """The party's business logic: book a relayed request, return the answer body."""

    def handle(self, message: Message, plain: Mapping[str, str]) -> dict[str, Any] | None: ...

    def flush(self) -> None:
        """Make what was booked durable (before any answer leaves)."""


class PeerNode(Node):
    """One simulated party with one or more sessions to the gateway."""

    def __init__(self, config: Config, journal: Journal, signer: Signer,
                 clock: Callable[[], float], gateway: Peer, role: str, book: Book) -> None:
        super().__init__(config, journal, signer, clock)
        self.role = role
        self.gateway = gateway
        self.book = book
        self.sessions: list[Session] = []
        self._ready: list[Session] = []
        #: Unanswered requests by MsgId: the session each went out on, and whom to tell.
        self._waiting: dict[str, tuple[Session, Answer, Lost | None]] = {}
        self.on_ready: list[Callable[[], None]] = []
        #: Called on every session that becomes ready (``on_ready`` is for the next one).
        self.on_each_ready: list[Callable[[], None]] = []
        #: Answer sending hook: the edge may delay it (``sim --delay``).
        self.answer_later: Callable[[Callable[[], None]], None] = lambda send: send()

    # --- SessionOwner -----------------------------------------------------------
    def find_peer(self, party: str) -> Peer | None:
        return self.gateway if party == self.gateway.party else None

    def add_session(self, session: Session) -> None:
        self.sessions.append(session)

    def session_ready(self, session: Session) -> None:
        self._ready.append(session)
        log.info("%s ready on session %s", self.config.party, session.session_id)
        callbacks, self.on_ready = self.on_ready, []
        for callback in [*callbacks, *self.on_each_ready]:
            callback()

    def session_closed(self, session: Session) -> None:
        """Forget the session; requests that went out on it and were not answered are
        lost with it (their answers, if any come, go to a session that is gone)."""
        for bucket in (self.sessions, self._ready):
            if session in bucket:
                bucket.remove(session)
        lost = [msg_id for msg_id, (on, _, _) in self._waiting.items() if on is session]
        for msg_id in lost:
            _, _, tell = self._waiting.pop(msg_id)
            if tell is not None:
                tell()

    @property
    def ready(self) -> bool:
        return any(s.ready for s in self._ready)

    def business_message(self, session: Session, verified: Verified) -> None:
        message = verified.message
        if message.kind.is_response:
            waiter = self._waiting.pop(message.head.ref_id or "", None)
            if waiter is not None:
                waiter[1](message)
            return
        plain = {name: decrypt_field(verified.keys.data_key, message.head.msg_id, name,
                                     str(message.body[name]))
                 for name in catalog.ENCRYPTED_FIELDS.get(catalog.BODY_BY_TYPE[message.type], ())
                 if verified.keys is not None and isinstance(message.body.get(name), str)}
        body = self.book.handle(message, plain)
        if body is None:
            log.info("%s withholds its answer to %s %s", self.config.party, message.type,
                     message.body.get("BizSn"))
            return

        def send() -> None:
            if session.ready:  # written after the next flush (booking, then journal)
                session.send(message.kind.response_type, body, ref_id=message.head.msg_id,
                             to=message.head.from_party)

        self.answer_later(send)

    def peer_error(self, session: Session, verified: Verified) -> None:
        ref = str(verified.message.body.get("RefMsgId") or "")
        waiter = self._waiting.pop(ref, None)
        if waiter is not None:
            waiter[1](verified.message)

    def flush(self, background: bool = False) -> int:
        """Group commit: the books (a no-op when they share the journal's transaction),
        then the journal, then the queued writes (the sims' SQLite journal commits in
        process: ``background`` changes nothing)."""
        self.book.flush()
        return super().flush(background)

    def tick(self) -> None:
        for session in list(self.sessions):
            session.tick()

    # --- requests ---------------------------------------------------------------
    def request(self, msg_type: str, body: Mapping[str, Any], to: str, on_answer: Answer,
                secret: Mapping[str, str] | None = None, on_lost: Lost | None = None) -> str:
        """Send a request on a ready session; ``on_answer`` gets the response or SYS.ERROR,
        ``on_lost`` is called instead if that session closes first."""
        session = self._next_ready()
        if session is None:
            raise CounterpartyNotConnected("no ready session to the gateway")
        sent = session.send(msg_type, body, to=to, secret=secret)
        self._waiting[sent.msg_id] = (session, on_answer, on_lost)
        return sent.msg_id

    def _next_ready(self) -> Session | None:
        """The ready sessions take turns (round-robin), as a multi-link host would."""
        for _ in range(len(self._ready)):
            session = self._ready.pop(0)
            self._ready.append(session)
            if session.ready:
                return session
        return None

    @property
    def outstanding(self) -> int:
        return len(self._waiting)
