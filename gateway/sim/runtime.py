"""Twisted edge of the reference peers: build a node from its home, dial the gateway."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from twisted.application import internet
from twisted.internet import defer, endpoints, task

from ..addresses import AddressListEndpoint, AddressRing
from ..config import Config, check_address_list
from ..errors import NotActive
from ..fieldcrypto import StorageCipher
from ..filemodes import private_dir
from ..journal import Journal
from ..keystore import Peer, generate_key_file, load_signer
from ..logsetup import DialOut
from ..server import TICK_SECONDS, GatewayFactory, SessionProtocol
from ..signature import key_type, load_public_key, signer_id
from ..tls import GatewayTLS
from .bank import BankBook
from .broker import BrokerBook
from .ledger import Ledger
from .node import PeerNode

log = logging.getLogger(__name__)


#: A lost connection is dialled again after this many seconds (plus up to 1 s of
#: jitter), then 1.5 times longer each failed try, at most the second figure: a
#: gateway back after a restart is found within seconds.
RECONNECT_FIRST_SECONDS, RECONNECT_MAX_SECONDS = 0.5, 10.0
#: After sessions that fail before they are ready (a TLS handshake refused, a logon
#: refused, a gateway that hangs up: a plain sim at a TLS port) the wait grows up to
#: this: such a failure does not mend itself within seconds, and each one is logged.
FAILED_MAX_SECONDS = 60.0


class Redial(DialOut):
    """When to dial the gateway again (a ClientService ``retryPolicy``), logged.

    ClientService counts failed connects and starts again from 0 once a connect
    succeeds, so a session that fails after its connect — a TLS handshake or a logon
    refused — would be tried again every second or so for ever.  Here those failures
    count too, until a session is ready.  Each failed connect and each failed session
    is one log line with the reason and the wait (gateway.logsetup.DialOut)."""

    def __init__(self, party: str, address: str) -> None:
        super().__init__("the gateway", address, log, prefix=f"{party}: ", announce=False)
        self.party = party
        self.failures = 0
        #: S903 answers in a row (a standby gateway, §12)
        self.standbys = 0
        self._connects = internet.backoffPolicy(RECONNECT_FIRST_SECONDS, RECONNECT_MAX_SECONDS)
        self._sessions = internet.backoffPolicy(RECONNECT_FIRST_SECONDS, FAILED_MAX_SECONDS,
                                                jitter=lambda: 0.0)

    def delay(self, attempt: int) -> float:
        if self.failures:
            return float(self._sessions(self.failures))
        if self.standbys:
            return float(self._connects(self.standbys))
        return float(self._connects(attempt))

    def failed(self, why: str) -> None:
        """A session to the gateway ended before it was ready."""
        self.failures += 1
        super().failed(f"session with the gateway at {self.address} failed: {why}")

    def standby(self, why: str) -> None:
        """The gateway dialled answered S903: a standby of a pair (§12).  Not a failure
        to back off from for long: the next attempt dials the next address, after the
        short back-off of a connect refused."""
        self.standbys += 1
        super().failed(f"the gateway at {self.address} is a standby ({why}); trying the "
                       "next address")

    def ready(self) -> None:
        self.failures = self.standbys = 0


def gateway_peer(cert_pem: bytes, party: str) -> Peer:
    """The gateway as the sims see it: its party id and certificate key."""
    key = load_public_key(cert_pem)
    return Peer(party=party, role="GATEWAY", key_type=key_type(key), signer=signer_id(key),
                connect=None, public_key=key, pem=cert_pem)


def key_file(home: Path, party: str) -> Path:
    return home / "keys" / f"{party}.key"


def ensure_key(home: Path, party: str) -> Path:
    """The peer's long-term ES256 key (0600), created on first use; returns its
    public-key PEM path, which the gateway operator registers with `peer add`."""
    path = key_file(home, party)
    private_dir(path.parent)
    signer = load_signer(path) if path.exists() else generate_key_file(path, "ES256")
    from cryptography.hazmat.primitives import serialization

    pub = home / "keys" / f"{party}.pub.pem"
    pub.write_bytes(signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def storage_cipher(home: Path, party: str) -> StorageCipher:
    """The cipher that seals the client identity in the party's books (§4 at rest), its
    32-byte key ``keys/<party>.storage.key`` (0600) created on first use."""
    path = home / "keys" / f"{party}.storage.key"
    if not path.exists():
        private_dir(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
    return StorageCipher(path.read_bytes())


def cert_file(home: Path, party: str) -> Path:
    """Where the sim keeps the certificate for its key that the gateway's operator
    issued (``gateway peer issue``): its TLS client certificate."""
    return home / "keys" / f"{party}.crt"


def client_tls(home: Path, party: str, connect: str, trusted_pem: bytes,
               cert_path: Path | None = None) -> GatewayTLS:
    """TLS towards the gateway at ``connect``: the sim's key with its certificate
    (default :func:`cert_file`), trusting the certificates in ``trusted_pem`` (the
    gateway's own, or the CA that issued it).  ValueError says what is missing."""
    from ..certificates import CertificateRefused, Identity, load_certificates

    path = cert_path or cert_file(home, party)
    if not path.exists():
        raise ValueError(f"no TLS client certificate at {path}: the gateway's operator "
                         f"issues one for {party}'s registered key with `gateway peer issue "
                         f"--id {party} --out {path}` (--tls-cert FILE names another)")
    try:
        certs = load_certificates(path.read_bytes(), str(path))
        trusted = load_certificates(trusted_pem, "the certificate(s) to trust")
    except CertificateRefused as exc:
        raise ValueError(str(exc)) from None
    signer = load_signer(key_file(home, party))
    if signer_id(certs[0].public_key()) != signer.signer:  # type: ignore[arg-type]
        raise ValueError(f"{path} is not for {party}'s key {key_file(home, party)} "
                         f"(signer {signer.signer})")
    host, _ = check_address_list(connect)[0]  # the others: GatewayTLS.for_host
    return GatewayTLS(host, Identity(signer.private_key, certs[0], certs[1:]), trusted)


def books_file(home: Path, party: str) -> Path:
    """The sim's SQLite file: its books and (see :func:`journal_file`) its journal."""
    return home / "data" / f"{party}-ledger.sqlite3"


def journal_file(home: Path, party: str) -> Path:
    """Where the sim's message journal is: in the books' file, so one commit (one
    fsync) per reactor turn covers the bookings and the evidence of their answers — or,
    in a home made before that, the separate journal file it already has."""
    separate = home / "data" / f"{party}-journal.sqlite3"
    return separate if separate.exists() else books_file(home, party)


def open_books(home: Path, party: str) -> tuple[Journal, Ledger]:
    """The sim's journal and ledger; sharing one file and transaction where they can."""
    journal = Journal(journal_file(home, party))
    sealer = storage_cipher(home, party)
    if journal.path == books_file(home, party):
        return journal, Ledger(journal, sealer=sealer)
    return journal, Ledger(books_file(home, party), group_commit=True, sealer=sealer)


@dataclass
class Sim:
    """A running simulated party."""

    node: PeerNode
    book: Any
    factory: GatewayFactory
    services: list[Any]
    ticker: task.LoopingCall
    ledger: Ledger
    #: Called first when it stops (e.g. an Originator's recovery loop): nothing of
    #: theirs may run on closed books.
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    #: Why :meth:`stop` failed (it is logged), or None.
    stop_error: str | None = field(default=None, init=False)
    _stopping: defer.Deferred[None] | None = field(default=None, init=False, repr=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop (once, however often it is called): act on what arrived (and answer it),
        close the sessions, commit; when the connections are down, commit what they
        left and close the books and the journal (which logs its commit totals).

        Each call gets a Deferred of its own that fires when all of that is done. A stop
        that fails (a final commit, say) is logged, and :attr:`stop_error` says why."""
        if self._stopping is None:
            # set before _stop runs: a stop() from inside it (an answer acted on ends a
            # script, which stops the demo) waits for this one instead of starting another
            self._stopping = defer.Deferred()
            defer.maybeDeferred(self._stop).addErrback(self._stop_failed).chainDeferred(
                self._stopping)
        done: defer.Deferred[None] = defer.Deferred()
        self._stopping.addCallback(lambda _: done.callback(None))
        return done

    @defer.inlineCallbacks
    def _stop(self) -> Any:
        """Every step is tried whatever the one before it did (a failed final commit
        must not leave the connections up or the journal open); each failure is logged
        and noted in :attr:`stop_error`."""
        if self.ticker.running:
            self.ticker.stop()
        for stop in self.stoppers:
            self._attempt("stopping what runs on the books", stop)
        self._attempt("acting on what arrived", self.factory.act_on_reads)  # answered first
        why = f"{self.node.config.party} is stopping"
        for session in list(self.node.sessions):
            self._attempt("closing a session", partial(session.close, why))
        self._attempt("the final commit", self.node.flush)
        results = yield defer.DeferredList(
            [defer.maybeDeferred(service.stopService) for service in self.services],
            consumeErrors=True)
        for ok, failure in results:
            if not ok:
                log.error("%s: a connection to the gateway did not stop cleanly: %s",
                          self.node.config.party, failure.getErrorMessage())
                self._note_error(f"a connection did not stop: {_why(failure)}")
        self._attempt("the final commit", self.factory.flush_now)  # what the connections left
        self._attempt("closing the books", self.ledger.close)
        self._attempt("closing the journal", self.node.journal.close)

    def _attempt(self, what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:
            log.exception("%s: stopping: %s failed", self.node.config.party, what)
            self._note_error(f"{what}: {exc or type(exc).__name__}")

    def _stop_failed(self, failure: Any) -> None:
        log.error("%s: stopping failed: %s", self.node.config.party, failure.getTraceback())
        self._note_error(_why(failure))

    def _note_error(self, text: str) -> None:
        self.stop_error = text if self.stop_error is None else f"{self.stop_error}; {text}"


def _why(failure: Any) -> str:
    """A failure in a few words: its message, or its type when it has none."""
    return str(failure.getErrorMessage() or failure.type.__name__)


class GatewayLink(SessionProtocol):
    """A sim's connection to the gateway: one that ends before its session was ever
    ready is a failure to report and back off from (:class:`Redial`)."""

    factory: PeerFactory

    def handshake_failed(self, why: str) -> None:
        self.factory.redial.failed(f"TLS handshake: {why}")

    def connectionLost(self, reason: Any = None) -> None:
        session = self.session
        ended_here = session is not None and session.close_reason is not None
        super().connectionLost(reason)
        if session is not None and session.logon_refused_with == NotActive.code:
            self.factory.redial.standby(str(session.close_reason))
        elif session is not None and not session.keyring.has_key:
            self.factory.redial.failed(
                str(session.close_reason) if ended_here else
                "the connection ended before the session was ready (logon refused, or the "
                "gateway serves TLS and this sim dials without --tls?)")


class PeerFactory(GatewayFactory):
    """Connections of a bank/broker node to the gateway (it logs on)."""

    peer_side = True

    def __init__(self, node: PeerNode, reactor: Any, redial: Redial) -> None:
        # a PeerNode serves the factory's part of a Gateway: sessions, flush, tick
        super().__init__(node, reactor)  # type: ignore[arg-type]
        self.redial = redial
        node.on_each_ready.append(redial.ready)

    def buildProtocol(self, addr: Any) -> SessionProtocol:
        node = self.gateway
        assert isinstance(node, PeerNode)
        return GatewayLink(self, connect_to=node.gateway, after_handshake=self.tls)


def start_sim(reactor: Any, home: Path, role: str, party: str, connect: str,
              gateway_cert: bytes, gateway_party: str = "GW01",
              heartbeat_seconds: float = 30.0, connections: int = 1,
              tls: GatewayTLS | None = None) -> Sim:
    """Build the node (keys, journal, ledger) and keep ``connections`` sessions to the
    gateway (requests take turns over them); over TLS with ``tls``."""
    ensure_key(home, party)
    signer = load_signer(key_file(home, party))
    journal, ledger = open_books(home, party)
    node: PeerNode  # made below; the books ask it for the date and time
    today = lambda: node.trade_date()  # noqa: E731
    now_iso = lambda: node.iso_time()  # noqa: E731
    book: Any = (BankBook(ledger, party, today, now_iso) if role == "BANK"
                 else BrokerBook(ledger, party, today, now_iso))
    cfg = Config(party=party, heartbeat_seconds=heartbeat_seconds)
    node = PeerNode(cfg, journal, signer, reactor.seconds, gateway_peer(gateway_cert,
                                                                         gateway_party),
                    role, book)
    redial = Redial(party, connect)
    factory = PeerFactory(node, reactor, redial)
    factory.tls = tls is not None

    def endpoint_for(host: str, port: int) -> Any:
        endpoint: Any = endpoints.HostnameEndpoint(reactor, host, port)
        return endpoint if tls is None else endpoints.wrapClientTLS(tls.for_host(host),
                                                                    endpoint)

    def on_address(address: str) -> None:
        redial.address = address

    # each connection goes through the gateway's addresses in turn on its own (§12)
    services = [internet.ClientService(redial.wrap(AddressListEndpoint(
        AddressRing.parse(connect), endpoint_for, on_address)), factory,
        retryPolicy=redial, clock=reactor) for _ in range(connections)]
    for service in services:
        service.startService()
    ticker = task.LoopingCall(factory.tick)
    ticker.clock = reactor
    ticker.start(TICK_SECONDS, now=False)
    log.info("%s %s dialling the gateway at %s%s (%d connection%s)", role.lower(), party,
             connect, " over TLS" if tls is not None else "", connections,
             "" if connections == 1 else "s")
    return Sim(node, book, factory, services, ticker, ledger)
