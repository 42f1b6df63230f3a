"""The Twisted edge: protocol, factories, TLS context, service (no business logic).

Bytes from a socket go to the connection's sans-IO :class:`~gateway.session.Session`;
the relay core (:class:`~gateway.relay.Gateway`) is driven by a ticker and a
per-reactor-turn journal flush, which commits and then releases the writes.
"""
from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IPushProducer,
    IReactorTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .addresses import AddressListEndpoint, AddressRing
from .alertrules import AlertSettings, load_settings
from .certificates import gateway_identity
from .config import CONFIG_FILE, Config, is_postgresql, split_host_port
from .journal import Journal
from .keystore import KeyStore, Peer
from .logsetup import DialOut, connection_end, host_port, join_host_port
from .ops import OpsEndpoint
from .opsconfig import OpsConfig
from .registry import close_untrusted
from .relay import Gateway
from .session import AWAITING_LOGON, Session, new_session_id, receive_reads
from .tls import CLOSED_EARLY, DialOutTLS, handshake_failure, server_options

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
#: How often the key store is looked at for `peer` and `key` commands run meanwhile
#: (§9: they act on a running gateway within 1 s, without a signal).
REGISTRY_POLL_SECONDS = 0.5
#: How long a closing connection may take to finish its (TLS) shutdown.
CLOSE_GRACE_SECONDS = 1.0


@implementer(IPushProducer, IHandshakeListener)
class SessionProtocol(protocol.Protocol):
    """One TCP (or TLS) connection; a :class:`Link` for its session.

    ``after_handshake``: a TLS connection starts its session only once the handshake
    is done.  One we dialled would send SYS.LOGON: TLS buffers a write made before that
    and pauses its producer — us — which would stop the very reads the handshake waits
    for.  One that never completes it (a plain TCP client, a probe, a certificate
    refused) is one log line saying why, and never a session; the handshake must be
    done within ``tls_handshake_seconds``."""

    #: A TCP or TLS transport once connected: ITCPTransport, IProducer and (TLS)
    #: ISSLTransport at once, which one interface type cannot say.
    transport: Any

    def __init__(self, factory: GatewayFactory, connect_to: Peer | None = None,
                 after_handshake: bool = False) -> None:
        self.factory = factory
        self.connect_to = connect_to
        self.after_handshake = after_handshake
        self.session: Session | None = None
        self._paused = False
        self._written_while_paused = 0
        self._abort_call: Any = None
        self._handshake_call: Any = None
        self._tls_refusal: str | None = None
        self._address = "?"
        #: Why we are cutting the connection, for its session's close line.
        self._cut_why: str | None = None

    # Link ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._paused:
            self._written_while_paused += len(data)
            if self._written_while_paused > self.factory.config.max_send_buffer_bytes:
                log.warning("peer %s does not read: %d bytes queued, closing",
                            self.session.party if self.session else "?",
                            self._written_while_paused)
                self._cut_why = (f"the peer does not read ({self._written_while_paused} "
                                 "bytes queued)")
                self.transport.abortConnection()
                return
        self.transport.write(data)

    def close(self) -> None:
        """Close after the queued writes; a peer that does not complete the (TLS)
        shutdown within CLOSE_GRACE_SECONDS is cut off.  Once the connection is lost
        there is nothing to close (nor to abort later: a TLS transport that is gone
        cannot even be aborted)."""
        if not self.connected:
            return
        self.transport.loseConnection()
        if self._abort_call is None or not self._abort_call.active():
            self._abort_call = self.factory.reactor.callLater(CLOSE_GRACE_SECONDS,
                                                              self._abort)

    def _abort(self) -> None:
        if self.connected:
            self.transport.abortConnection()

    def peer_public_key(self) -> Any | None:
        get = getattr(self.transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        return cert.to_cryptography().public_key() if cert is not None else None

    # IPushProducer: the transport tells us when the peer stops reading ----------
    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()  # stop reading from a peer we cannot answer

    def resumeProducing(self) -> None:
        self._paused = False
        self._written_while_paused = 0
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    # Protocol --------------------------------------------------------------------
    def connectionMade(self) -> None:
        if not self._make_room():
            log.warning("connection limit %d reached; refusing %s",
                        self.factory.config.max_connections,
                        host_port(self.transport.getPeer()))
            self.transport.abortConnection()
            return
        self._no_delay()
        self._bound_reads()
        self.transport.registerProducer(self, True)
        if not self.after_handshake:
            self._start_session()
        else:
            self._await_handshake()

    # TLS handshake -----------------------------------------------------------------
    def _await_handshake(self) -> None:
        self._address = host_port(self.transport.getPeer())
        self._handshake_call = self.factory.reactor.callLater(
            self.factory.config.tls_handshake_seconds, self._handshake_overdue)

    def _handshake_overdue(self) -> None:
        self.note_tls_refusal(f"no TLS handshake within "
                              f"{self.factory.config.tls_handshake_seconds:g} s")
        self.transport.abortConnection()

    def note_tls_refusal(self, why: str) -> None:
        """Why the handshake is failing (a certificate check: see gateway.tls)."""
        self._tls_refusal = self._tls_refusal or why

    def _make_room(self) -> bool:
        """Below ``max_connections``: yes.  At it, the inbound connection that has waited
        longest for its logon (if any) is closed to make room: connections that never
        log on cannot lock a bank out, a logged-on session is never displaced."""
        gw, limit = self.factory.gateway, self.factory.config.max_connections
        if len(gw.sessions) < limit:
            return True
        waiting = [s for s in gw.sessions if s.state == AWAITING_LOGON]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda s: s.opened_at)
        log.warning("connection limit %d reached: closing session %s, not logged on after "
                    "%.1f s, for %s", limit, oldest.session_id,
                    gw.now() - oldest.opened_at, host_port(self.transport.getPeer()))
        oldest.close(f"connection limit {limit} reached: its slot went to a new connection")
        self.factory.schedule_flush()
        return bool(len(gw.sessions) < limit)

    def handshakeCompleted(self) -> None:
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None
        if self.after_handshake and self.session is None and self.connected:
            self._start_session()

    def handshake_failed(self, why: str) -> None:
        """One line: who, and why; a connect-and-close (a TCP health probe) is routine."""
        where = f"dial-out to {self.connect_to.party}: " if self.connect_to else ""
        level = logging.INFO if why == CLOSED_EARLY else logging.WARNING
        log.log(level, "%sTLS handshake with %s failed: %s", where, self._address, why)

    def _start_session(self) -> None:
        gw = self.factory.gateway
        self.session = Session(gw, self, new_session_id(gw.random_bytes), self.connect_to,
                               peer_side=self.factory.peer_side)
        gw.add_session(self.session)
        address = host_port(self.transport.getPeer())
        if self.connect_to is not None:
            log.info("session %s: connected to %s at %s (dialled out), logging on",
                     self.session.session_id, self.connect_to.party, address)
        else:
            log.info("session %s: connection from %s", self.session.session_id, address)
        self.factory.schedule_flush()

    def _no_delay(self) -> None:
        """Frames are written whole, after the journal commit: Nagle's algorithm would
        only hold a small answer back waiting for the peer's delayed ACK (≈40 ms)."""
        handle = self.transport
        set_no_delay = getattr(handle, "setTcpNoDelay", None)
        if set_no_delay is None:  # TLS: the option belongs to the TCP transport below
            set_no_delay = getattr(getattr(handle, "transport", None), "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def _bound_reads(self) -> None:
        """Read at most ``read_chunk_bytes`` per socket per reactor turn.  Twisted's
        default (64 KiB ≈ 40 frames) lets one turn verify, journal and sign a whole
        burst before a single answer leaves, so the peers downstream sit idle meanwhile;
        ~10 frames per turn keeps gateway, bank and broker working side by side
        (docs/BENCHMARKS.md: +25 % relayed round trips/s).  The same attribute is the
        send-buffer size beyond which Twisted pauses us as a producer."""
        handle = getattr(self.transport, "transport", None) or self.transport  # TLS: below
        for t in {id(handle): handle, id(self.transport): self.transport}.values():
            if hasattr(t, "bufferSize"):
                t.bufferSize = self.factory.config.read_chunk_bytes

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.factory.read(self.session, data)

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self._handshake_call is not None:  # set until the handshake is done
            if self._handshake_call.active():
                self._handshake_call.cancel()
            self._handshake_call = None
            self.handshake_failed(handshake_failure(getattr(reason, "value", reason),
                                                    self._tls_refusal))
        if self.session is not None:
            try:
                self.factory.act_on_reads()  # what arrived before the close is acted on
            finally:
                self.session.close(self._cut_why or connection_end(reason))
            self.factory.schedule_flush()


class GatewayFactory(protocol.Factory):
    """Shared state for all connections: the node (relay core) and the flush timer."""

    #: True when the node is a bank/broker whose sessions face a relaying gateway.
    peer_side = False
    #: True when its connections are TLS: a session starts once the handshake is done.
    tls = False
    #: No "Starting factory" line from Twisted per connection: sessions log their own.
    noisy = False

    def __init__(self, gateway: Gateway, reactor: IReactorTime) -> None:
        self.gateway = gateway
        self.config: Config = gateway.config
        self.reactor = reactor
        self._flush_call: Any = None
        self._reads: list[tuple[Session, bytes]] = []
        #: Called before a turn's reads are acted on (the gateway: KeyStore.refresh).
        self.before_reads: Callable[[], None] | None = None
        #: Called first in every turn that acts on reads or timers (a pair's lease
        #: check, §12: a paused active cuts its sessions before it handles anything).
        self.guard: Callable[[], None] | None = None
        #: Told a failed commit; True when it was handled (a pair's fenced commit, §12:
        #: the gateway stands by instead of stopping).
        self.fenced: Callable[[BaseException], bool] | None = None

    def buildProtocol(self, addr: Any) -> SessionProtocol:
        return SessionProtocol(self, after_handshake=self.tls)

    def schedule_flush(self) -> None:
        """Group commit: one journal commit per reactor turn, then the writes."""
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(0, self._flush)

    def read(self, session: Session, data: bytes) -> None:
        """Bytes from a connection: acted on at the end of the reactor turn, with every
        other read of the turn (gateway.session.receive_reads), then the group commit."""
        self._reads.append((session, data))
        self.schedule_flush()

    def act_on_reads(self) -> None:
        if self.guard is not None and self._reads:
            self.guard()
        reads, self._reads = self._reads, []
        if reads:
            try:
                if self.before_reads is not None:
                    self.before_reads()
                receive_reads(reads)
            except Exception:  # a bug; each frame's own errors are answered inside
                log.exception("acting on %d read(s) failed; closing their sessions",
                              len(reads))
                for session, _ in reads:
                    session.close("internal error acting on its messages (see the "
                                  "traceback above)")

    def flush_now(self) -> None:
        """Act on what was read and commit now, not at the end of the turn (on stop:
        nothing may be left for a turn that runs after the journal is closed)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.act_on_reads()
        self.gateway.flush()

    def _flush(self) -> None:
        self._flush_call = None
        self.flush_or_stop(background=True)

    def flush_or_stop(self, background: bool = False) -> None:
        """Act on what was read and commit now; a commit that fails stops the gateway.
        ``background``: the end of a reactor turn — a journal that can commit off the
        reactor thread does (gateway/committhread.py), releasing the turn's frames
        when the commit is durable."""
        try:
            self.act_on_reads()
            self.gateway.flush(background=background)
        except Exception as exc:
            if self.fenced is not None and self.fenced(exc):
                return  # nothing of the turn was written, nor sent: stood by
            log.exception("journal flush failed; stopping to protect the journal")
            self.reactor.stop()  # type: ignore[attr-defined]

    def tick(self) -> None:
        if self.guard is not None:
            self.guard()
        self.act_on_reads()  # an answer already read settles before its timeout fires
        try:
            self.gateway.tick()
        except Exception:
            log.exception("timer tick failed")
        self.schedule_flush()


class OutboundFactory(protocol.Factory):
    """Connections the gateway makes to peers with a connect address (it sends LOGON)."""

    noisy = False  # each attempt is logged by its DialOut

    def __init__(self, parent: GatewayFactory, peer: Peer, tls: bool = False) -> None:
        self.parent = parent
        self.peer = peer
        self.tls = tls

    def buildProtocol(self, addr: Any) -> SessionProtocol:
        peer = self.parent.gateway.find_peer(self.peer.party) or self.peer  # as registered now
        return SessionProtocol(self.parent, connect_to=peer, after_handshake=self.tls)


@implementer(IOpenSSLServerConnectionCreator)
class _CurrentOptions:
    """The listening port's TLS connection creator, its options swapped in place after
    ``key promote`` (each new connection is made from the current ones: it presents the
    new certificate)."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.options.getContext(), None)
        connection.set_app_data(tls_protocol)
        return connection


class GatewayService(service.MultiService):
    """Listening port, outbound peers, ticker; drains and flushes on stop."""

    def __init__(self, home: Path, config: Config, reactor: Any, listen: str | None = None,
                 tls: bool | None = None, alerts: AlertSettings | None = None,
                 ops: OpsConfig | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.application: untyped
        self.reactor = reactor
        self.config = config
        self.home = home
        self.keystore = KeyStore(home / "keys", config.journal_url)
        self.journal = Journal(config.journal_url, config.journal_synchronous, home=home)
        self.gateway = Gateway(config, self.keystore, self.journal, reactor.seconds,
                               recover=not is_postgresql(config.journal_url))
        self.factory = GatewayFactory(self.gateway, reactor)
        self.keystore.check_every_lookup = False  # RegistryWatch.before_reads instead
        self._host, self._port_number = split_host_port(listen or config.listen)
        self.tls = config.tls if tls is None else tls
        self.factory.tls = self.tls
        self._tls_options = (_CurrentOptions(server_options(self.keystore.keys_dir))
                             if self.tls else None)
        self.port: Any = None
        self._identity = gateway_identity(self.keystore.keys_dir) if self.tls else None
        #: Dial-outs by party: (what they were made from, the ClientService).
        self._dialling: dict[str, tuple[tuple[Any, ...], service.Service]] = {}
        self._dial_tls: dict[str, DialOutTLS] = {}
        #: §12: the lease of an active/standby pair (``[journal] url`` PostgreSQL), else
        #: None: alone on SQLite, always active.
        self.pair: Any = None
        if is_postgresql(config.journal_url):
            self._open_pair()
        self.update_dial_outs()
        self._ticker = task.LoopingCall(self.factory.tick)
        self._ticker.clock = reactor
        self.registry_watch = RegistryWatch(self)
        self.factory.before_reads = self.registry_watch.before_reads
        #: Called with gateway.toml's ``[alerts]`` table each time SIGHUP reloads it.
        self.alerts_reload_hooks: list[Callable[[dict[str, Any]], None]] = []
        #: The §10 ops HTTP endpoint (``serve``; None without ``[ops] listen``).
        self.ops = OpsEndpoint(self, ops) if ops is not None and ops.enabled else None

        # §10 thresholds and the alert command (run from HOME); reloaded on SIGHUP
        self.gateway.monitor.configure(alerts or load_settings(home), cwd=home)
        self.alerts_reload_hooks.append(self.gateway.monitor.reload)

    # --- active / standby (§12) ----------------------------------------------------
    def _open_pair(self) -> None:
        """The lease loop on PostgreSQL (gateway/store_pg/pair.py): a standby until the
        lease is ours.  PairUnavailable (a RuntimeError) goes up: ``serve`` exits 1."""
        from .standing import LeaseStanding
        from .store_pg.leasedb import bound_statements, tag_journal
        from .store_pg.pair import open_pair

        cfg = self.config
        bound = cfg.journal_statement_timeout_seconds  # a hung database: errors, no hang
        self.pair = open_pair(cfg.journal_url, cfg.journal_failover_seconds, self.reactor,
                              self._became_active, self._stand_by, bound)
        uow = getattr(self.journal.store, "uow", None)
        if uow is not None and hasattr(uow, "grant"):  # the journal on PostgreSQL
            holder = self.pair.holder

            def configure(conn: Any) -> None:
                bound_statements(conn, bound)
                tag_journal(conn, holder)  # a takeover ends it if it stalls mid-turn

            configure(uow.connection)
            self.journal.store.setup.append(configure)  # type: ignore[attr-defined]
        if hasattr(self.keystore.registry, "bound"):
            self.keystore.registry.bound(bound)
        self.gateway.standing = LeaseStanding(self.pair.keeper)
        self.factory.guard = self.pair.check
        self.factory.fenced = self._commit_fenced
        uow = getattr(self.journal.store, "uow", None)
        if (cfg.journal_background_commit and uow is not None
                and hasattr(uow, "background")):  # end-of-turn commits off-thread
            from .committhread import ReactorBackground

            uow.background = ReactorBackground(
                self.reactor, lambda: self.factory.flush_or_stop(background=True))
            log.info("journal commits run off the reactor thread ([journal]"
                     " background_commit)")

    def _commit_fenced(self, exc: BaseException) -> bool:
        """A commit refused by the lease's fence (a PostgreSQL journal, §12): step down
        at once; any other failure is not ours to handle (the gateway stops)."""
        from .store_pg.leasedb import Fenced

        if not isinstance(exc, Fenced):
            return False
        log.error("a journal commit was fenced: %s; standing by", exc)
        self.pair.fenced()
        return True

    def _became_active(self, grant: Any) -> None:
        """The lease is ours: accept logons (the session asks the standing), dial out."""
        log.warning("active: lease epoch %d taken; accepting logons and dialling out",
                    grant.epoch)
        uow = getattr(self.journal.store, "uow", None)
        if uow is not None and hasattr(uow, "grant"):
            from .store_pg.leasedb import end_stale_turns

            uow.wait_for_commit()  # (a standby's refused logons may be committing)
            ended = end_stale_turns(uow.connection, grant.holder)  # their locks go now
            if ended:
                log.warning("ended %d stale journal session(s) of the previous active"
                            " (a turn it left open, uncommitted)", ended)
            uow.grant = grant  # every commit from now on is fenced by this epoch (§12)
        self.gateway.take_over()
        self.factory.flush_now()
        if self.ops is not None:
            self.ops.readiness.restart()
        self.update_dial_outs()

    def _stand_by(self) -> None:
        """The lease is not confirmed ours: cut every session now (nothing queued
        leaves), stop dialling; the lease machine is standby next."""
        cut = self.gateway.stand_by("this gateway is not the active one any more "
                                    "(§12: its lease is not confirmed)")
        log.error("standing by: %d session(s) cut, dial-outs stopped; logons get S903", cut)
        uow = getattr(self.journal.store, "uow", None)
        if uow is not None and hasattr(uow, "grant"):
            uow.discard()  # the turn's uncommitted writes and frames: never unfenced
            uow.grant = None  # a standby journals no business, only refused logons
            uow.reconnect_if_lost()  # ended by the new active's takeover: a fresh one
        if self.ops is not None:
            self.ops.stood_by()  # a suspend/resume waiting for its commit: 503
        self.update_dial_outs()

    # --- dial-outs -------------------------------------------------------------------
    def update_dial_outs(self) -> None:
        """Dial every enabled peer that has a connect address, as registered now: one
        removed, disabled or given another address is hung up (its ClientService stops)
        and dialled anew, or no more.  A new key or role needs no new dial-out: the
        session of the old one is closed by RegistryWatch, and the next connection
        logs on, and checks the peer's TLS key, as the peer is registered then."""
        plan = ({p.party: (p.connect,) for p in self.keystore.peers() if p.connect and p.enabled}
                if self.gateway.accepts_logons else {})  # a standby dials nobody (§12)
        for party, creator in self._dial_tls.items():
            creator._peer = self.keystore.peer(party) or creator._peer
        for party, (made_from, client) in list(self._dialling.items()):
            if plan.get(party) != made_from:
                del self._dialling[party]
                self._dial_tls.pop(party, None)
                client.disownServiceParent()
                log.info("dial-out to %s stopped (%s)", party,
                         "its registration changed" if self.gateway.accepts_logons
                         else "standby")
        for party, made_from in plan.items():
            peer = self.keystore.peer(party)
            if party not in self._dialling and peer is not None:
                client = self._dial_out(peer)
                client.setServiceParent(self)
                self._dialling[party] = (made_from, client)

    def _dial_out(self, peer: Peer) -> service.Service:
        """A ClientService dialling the peer's address, or its addresses in turn (§12:
        each attempt after a failure or a lost session goes to the next one)."""
        assert peer.connect is not None
        ring = AddressRing.parse(peer.connect)
        creator: DialOutTLS | None = None
        if self._identity is not None:  # --tls covers the sessions we dial too
            creator = self._dial_tls[peer.party] = DialOutTLS(self._identity, peer)
        over = " over TLS" if creator is not None else ""

        def endpoint_for(host: str, port: int) -> Any:
            ep: Any = endpoints.HostnameEndpoint(self.reactor, host, port)
            return ep if creator is None else endpoints.wrapClientTLS(creator, ep)

        dial = DialOut(peer.party, ",".join(join_host_port(h, p) for h, p in ring.addresses)
                       + over, log)
        ep = AddressListEndpoint(ring, endpoint_for,
                                 lambda address: setattr(dial, "address", address + over))
        return internet.ClientService(dial.wrap(ep), OutboundFactory(
            self.factory, peer, tls=creator is not None), retryPolicy=dial,
            clock=self.reactor)

    def use_own_identity(self) -> None:
        """After ``key promote``: new TLS connections present the new certificate."""
        if not self.tls:
            return
        identity = self._identity = gateway_identity(self.keystore.keys_dir)
        assert self._tls_options is not None  # made with self.tls
        self._tls_options.options = server_options(self.keystore.keys_dir)
        for creator in self._dial_tls.values():
            creator.use_identity(identity)

    # --- SIGHUP ----------------------------------------------------------------------
    def reload_alerts(self) -> None:
        """SIGHUP (§9): read gateway.toml's ``[alerts]`` table again and hand it to
        :attr:`alerts_reload_hooks`; sessions and everything else stay as they are.  A
        file that cannot be read keeps the table in use."""
        path = self.home / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text("utf-8")) if path.exists() else {}
            table = data.get("alerts", {})
            if not isinstance(table, dict):
                raise ValueError("alerts is not a table")
        except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
            log.error("SIGHUP: %s unreadable (%s); the [alerts] settings in use are kept",
                      path, exc)
            return
        log.info("SIGHUP: [alerts] reloaded from %s: %s; %d session(s) kept", path,
                 ", ".join(sorted(table)) or "no settings", len(self.gateway.sessions))
        for hook in self.alerts_reload_hooks:
            hook(table)

    @property
    def listening_port(self) -> int:
        return int(self.port.getHost().port)

    def startService(self) -> None:
        if self._tls_options is not None:
            self.port = self.reactor.listenSSL(self._port_number, self.factory,
                                               self._tls_options, interface=self._host)
        else:
            self.port = self.reactor.listenTCP(self._port_number, self.factory,
                                               interface=self._host)
        if self.ops is not None:
            self.ops.start()
        super().startService()  # type: ignore[no-untyped-call]
        self._ticker.start(TICK_SECONDS, now=False)
        self.registry_watch.start()
        log.info("gateway %s serving on %s%s", self.config.party,
                 join_host_port(self._host, self.listening_port), " (TLS)" if self.tls else "")
        if self.pair is not None:
            self.pair.start()

    def _flush_on_stop(self) -> None:
        """Act on what was read and commit, while stopping.  A commit refused by the
        lease's fence (§12: the other gateway took over meanwhile) stands this one by —
        nothing of it written or sent — and the stop goes on; any other failure goes up."""
        try:
            self.factory.flush_now()
        except Exception as exc:
            if self.factory.fenced is None or not self.factory.fenced(exc):
                raise

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        """Stop accepting (connections, and new requests on open sessions: S902), let
        in-flight requests be answered or time out, flush."""
        if not self.running:  # it never started (it could not listen): nothing to drain
            if self.pair is not None:
                yield self.pair.stop()
            self.journal.close()
            return
        log.info("gateway stopping: draining %d in-flight request(s)", len(self.gateway.pending))
        self.gateway.start_draining()
        yield self.port.stopListening()
        deadline = self.reactor.seconds() + self.config.relay_timeout_seconds + 1
        while self.gateway.pending and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, TICK_SECONDS, lambda: None)
        if self._ticker.running:
            self._ticker.stop()
        self.registry_watch.stop()
        self.factory.act_on_reads()
        for session in list(self.gateway.sessions):
            session.close("the gateway is stopping")
        self._flush_on_stop()
        yield service.MultiService.stopService(self)
        self._flush_on_stop()  # what the closing connections left (connectionLost)
        if self.ops is not None:
            yield self.ops.stop()
        if self.gateway.retention is not None:  # its job's copy without the delete is
            self.gateway.retention.close()  # harmless: the next start moves it again
        if self.pair is not None:
            yield self.pair.stop()  # a standby takes the released lease at its next poll
        self.journal.close()
        self.gateway.monitor.close()  # the alert command gets the last alerts (bounded)
        log.info("gateway stopped; journal flushed")


class RegistryWatch:
    """`peer` and `key` commands reach a running gateway without a signal (§9).

    Before the reads of every reactor turn are acted on, it looks at the registry
    (one stat) and, if a command replaced it, closes at once the sessions whose logon
    key is no longer valid (replaced, un-promoted, disabled, removed: a SYS.ERROR E203
    says why, then the session closes): whatever a peer sent after the command
    returned, and whatever would be relayed in that turn, meets the new registry (the
    session checks each message too: Session._check_key_still_valid).  Every
    REGISTRY_POLL_SECONDS it does the same for idle sessions, dials the peers as
    registered now, and signs with the key ``key promote`` put in place.  The
    commands write whole files and rename them into place, so what it reads is a
    state before or after a command, never half of one; the signing key is taken
    only once its certificate matches it (a promote renames two files)."""

    def __init__(self, svc: GatewayService) -> None:
        self.svc = svc
        self._own_stamp = svc.keystore.own_key_stamp()
        self._call = task.LoopingCall(self.poll)
        self._call.clock = svc.reactor
        #: §12: the registry in PostgreSQL: its revision is asked on a worker thread.
        self._asking: Deferred[None] | None = None
        self._unanswered_said = False

    def start(self) -> None:
        self._call.start(REGISTRY_POLL_SECONDS, now=False)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()

    def before_reads(self) -> None:
        """GatewayFactory.before_reads: the registry as it is now, for this turn."""
        if self.svc.keystore.refresh():
            self._close_untrusted()

    def poll(self) -> None:
        """Every REGISTRY_POLL_SECONDS.  With the registry in PostgreSQL its revision is
        asked first, on a worker thread (one small query; the reactor never waits on
        the database for it), then applied as the file's stat is."""
        registry = self.svc.keystore.registry
        if not registry.remote:
            self._apply()
            return
        if self._asking is not None:
            return  # the last question is still out (a slow database)
        self._asking = threads.deferToThreadPool(
            self.svc.reactor, self.svc.reactor.getThreadPool(), registry.poll)
        self._asking.addCallbacks(self._answered, self._unanswered)

    def _answered(self, _: None) -> None:
        self._asking = None
        if self._unanswered_said:
            self._unanswered_said = False
            log.warning("the peer registry's revision is read again")
        self._apply()

    def _unanswered(self, failure: Failure) -> None:
        self._asking = None
        if not self._unanswered_said:  # once per outage, not every 0.5 s
            self._unanswered_said = True
            log.warning("the peer registry's revision could not be read (%s); the peers "
                        "read before stay in force", failure.getErrorMessage())
        self._apply()

    def _apply(self) -> None:
        svc = self.svc
        try:
            svc.keystore.refresh(fresh=False)
            self._own_key()
            if self._close_untrusted():
                svc.factory.flush_or_stop()  # their E203 is written before any hang-up
            svc.update_dial_outs()
        except Exception:  # a bug, or a key store broken by hand: keep serving, say so
            log.exception("applying the key store's changes failed")

    def _close_untrusted(self) -> int:
        return close_untrusted(self.svc.gateway.sessions, self.svc.keystore.peer,
                               _tell_closing)

    def _own_key(self) -> None:
        stamp = self.svc.keystore.own_key_stamp()
        if stamp == self._own_stamp:
            return
        signer = self.svc.keystore.reload_signer()
        if signer is None:
            return  # between the two renames of a promote: the next poll takes it
        self._own_stamp = stamp
        gateway = self.svc.gateway
        if signer.signer != gateway.signer.signer:
            log.warning("key promote: the gateway signs as %s from now on (was %s)",
                        signer.signer, gateway.signer.signer)
            gateway.signer = signer
            self.svc.use_own_identity()


def _tell_closing(session: Any, reason: str) -> None:
    log.warning("session %s: closing: %s", session.session_id, reason)
    session.send("SYS.ERROR", {"Code": "E203", "Text": f"{reason}; log on again with a "
                               "registered key", "RefMsgId": None})
    session.close(f"its key is no longer valid: {reason}")
