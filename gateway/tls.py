"""TLS for the Twisted edge (docs/security.md "TLS"): the gateway's listening side, its
dial-outs, the reference peers' side, and the one line that says why a handshake failed.

Every side is Twisted's ``CertificateOptions`` (TLS 1.2 or newer) built from
cryptography key and certificate objects.  Whose certificate is accepted:

- inbound, the gateway: a client certificate is required and must chain to a trust root
  (``keys/ca.crt``, ``keys/trust/``); at SYS.LOGON its key must be the registered key of
  the party logging on (§5.1, checked by the session: E203 otherwise);
- the gateway dialling a peer: the peer's certificate must carry its registered key;
- a reference peer dialling the gateway: the gateway's certificate must chain to what
  it trusts (``--tls-ca``) and name the host it dialled.
"""
from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet import error
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from zope.interface import implementer

from .certificates import Identity, gateway_identity, names_of, trust_roots
from .keystore import Peer
from .signature import signer_id

#: OpenSSL's X509_V_ERR_* codes an operator meets, in OpenSSL's words.
X509_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}
#: OpenSSL's words for bytes that are not a TLS ClientHello at all.
_NOT_TLS = ("wrong version number", "http request", "packet length too long",
            "unknown protocol", "record layer failure", "unexpected eof while reading")

#: A connection closed before its handshake: a TCP health probe, most often.
CLOSED_EARLY = "closed before the handshake completed (a plain TCP connect: a probe?)"

VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _trust(certs: Sequence[x509.Certificate]) -> Any:
    return trustRootFromCertificates(  # type: ignore[no-untyped-call]
        [Certificate.loadPEM(_pem(c)) for c in certs])


def _options(identity: Identity, trusted: Sequence[x509.Certificate] | None = None
             ) -> CertificateOptions:
    """TLS 1.2+ options presenting ``identity``; with ``trusted``, the peer must present
    a certificate that chains to one of them."""
    extra: dict[str, Any] = {"trustRoot": _trust(trusted)} if trusted is not None else {}
    # cryptography objects, which pyOpenSSL takes as they are; Twisted's hints still name
    # pyOpenSSL's own X509/PKey, whose use pyOpenSSL deprecates
    return CertificateOptions(
        privateKey=identity.key,
        certificate=identity.certificate,  # type: ignore[arg-type]
        extraCertChain=identity.chain or None,  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        **extra,
    )


def _subject(cert: crypto.X509) -> str:
    try:
        return cert.to_cryptography().subject.rfc4514_string() or "(no subject)"
    except ValueError:
        return "(unreadable)"


def note_refusal(conn: SSL.Connection, why: str) -> None:
    """Tell the connection's protocol why the other side's certificate was refused: the
    handshake then fails with OpenSSL's bare "certificate verify failed"."""
    protocol = getattr(conn.get_app_data(), "wrappedProtocol", None)
    note = getattr(protocol, "note_tls_refusal", None)
    if note is not None:
        note(why)


def _guarded(check: VerifyCallback) -> VerifyCallback:
    """A verify callback that never raises into OpenSSL: an error refuses."""
    def callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                 ok: int) -> bool:
        try:
            return check(conn, cert, errno, depth, ok)
        except Exception as exc:
            note_refusal(conn, f"checking the certificate failed: {exc!r}")
            return False

    return callback


def handshake_failure(reason: BaseException, noted: str | None) -> str:
    """Why a TLS handshake failed, in a few words."""
    if noted:
        return noted
    if isinstance(reason, SSL.Error):
        args = reason.args[0] if reason.args and isinstance(reason.args[0], list) else []
        words = "; ".join(str(a[2]) for a in args if isinstance(a, tuple) and len(a) == 3)
        words = words or str(reason) or "TLS error"
        if any(w in words for w in _NOT_TLS):
            words += " (not a TLS client: plain TCP?)"
        elif "alert" in words:
            words += " (the other side's alert: it refused this side's certificate or name?)"
        return words
    if isinstance(reason, (error.ConnectionDone, error.ConnectionLost)):
        return CLOSED_EARLY
    if isinstance(reason, VerificationError):
        return f"certificate name check failed: {reason}"
    return str(reason) or type(reason).__name__


# --- the gateway -------------------------------------------------------------------------
def server_options(keys_dir: Path) -> CertificateOptions:
    """The listening side: a client certificate that chains to a trust root is required
    (the key binding to the party is the session's check at SYS.LOGON)."""
    options = _options(gateway_identity(keys_dir), trust_roots(keys_dir))
    context = options.getContext()  # built once and kept: add our reason-noting callback
    context.set_verify(context.get_verify_mode(), _guarded(_client_verified))
    return options


def _client_verified(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                     ok: int) -> bool:
    if not ok:
        note_refusal(conn, f"client certificate {_subject(cert)} is not trusted: "
                           f"{X509_ERRORS.get(errno, f'X509 error {errno}')} (trust roots: "
                           "keys/ca.crt, keys/trust/)")
    return bool(ok)


@implementer(IOpenSSLClientConnectionCreator)
class DialOutTLS:
    """A session the gateway dials: the gateway's certificate is the client certificate;
    the peer's certificate must carry the peer's registered key (checked at handshake,
    since we know whom we dialled, and again at SYS.LOGON.RSP exactly as for inbound
    sessions).  Chains and names are not checked: the registered key is the identity."""

    def __init__(self, identity: Identity, peer: Peer) -> None:
        self._peer = peer
        self.use_identity(identity)

    def use_identity(self, identity: Identity) -> None:
        """Present ``identity`` from the next connection on (after ``key promote``)."""
        context = _options(identity).getContext()
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                           _guarded(self._verify))
        self._context = context

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tls_protocol)
        return conn

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
        if depth > 0:
            return True  # only the leaf's key matters
        if signer_id(cert.to_cryptography().public_key()) in self._peer.signers:  # type: ignore[arg-type]
            return True  # its current key, or its next one (§9 peer add --next)
        note_refusal(conn, f"its TLS certificate is not {self._peer.party}'s registered key")
        return False


# --- a reference peer dialling the gateway ------------------------------------------------
@implementer(IOpenSSLClientConnectionCreator)
class GatewayTLS:
    """A bank's or broker's side: its certificate (for its registered key) is the client
    certificate; the gateway's must chain to ``trusted`` and name ``host``, as any TLS
    client checks a server."""

    def __init__(self, host: str, identity: Identity,
                 trusted: Sequence[x509.Certificate]) -> None:
        self.host = host
        try:
            self._ip: str | None = str(ipaddress.ip_address(host))
        except ValueError:
            self._ip = None
        self._context = _options(identity, trusted).getContext()

    def for_host(self, host: str) -> GatewayTLS:
        """The same identity and trust for a gateway at another address of the list
        (§12): its certificate must name ``host``."""
        if host == self.host:
            return self
        other = copy.copy(self)
        other.host = host
        try:
            other._ip = str(ipaddress.ip_address(host))
        except ValueError:
            other._ip = None
        return other

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tls_protocol)
        if self._ip is None:
            conn.set_tlsext_host_name(self.host.encode("idna"))
        conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                        _guarded(self._verify))
        return conn

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
        if not ok:
            note_refusal(conn, f"the gateway's certificate chain ({_subject(cert)}) is not "
                               f"trusted: {X509_ERRORS.get(errno, f'X509 error {errno}')} "
                               "(--tls-ca names the certificate or CA to trust)")
            return False
        if depth > 0:
            return True
        leaf = cert.to_cryptography()
        try:
            if self._ip is not None:
                verify_certificate_ip_address(leaf, self._ip)
            else:
                verify_certificate_hostname(leaf, self.host)
        except VerificationError:
            note_refusal(conn, f"the gateway's certificate does not name {self.host} (it "
                               f"names {', '.join(names_of(leaf)) or 'nothing'}): dial one "
                               f"of those, or give the gateway a certificate naming {self.host}"
                               " (gateway init --san, gateway csr --san)")
            return False
        return True
