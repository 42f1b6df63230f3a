"""The gateway's X.509 life beyond ``init``: a certificate signing request, installing
the certificate a CA issued for it, the trust roots client certificates must chain to,
and certificates the dev CA issues to peers (docs/operations.md, "TLS set-up").

The gateway's key never changes here: a CA-issued certificate must be for the key in
``keys/gateway.key``, so the signer peers registered stays valid.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from .keystore import CA_CRT, GATEWAY_CRT, GATEWAY_KEY, KeyStore, _sign_hash, san_names
from .signature import signer_id

#: Folder of extra trust roots (``*.pem``/``*.crt``, several per file allowed): the CAs whose
#: certificates the gateway accepts, for its own certificate (``cert --install``) and
#: for the client certificates of peers, besides the dev CA (``keys/ca.crt``).
TRUST_DIR = "trust"
#: The intermediate certificates of an installed CA-issued certificate, sent in the
#: TLS handshake after ``gateway.crt``.
CHAIN_FILE = "gateway-chain.crt"


class CertificateRefused(ValueError):
    """A certificate that cannot be installed (the message says why)."""


# --- reading ---------------------------------------------------------------------
def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in ``data`` (PEM, one or more; or one DER)."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertificateRefused(f"{what} holds no readable certificate (PEM or DER)") from None


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of ``cert``'s subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def gateway_names(store: KeyStore) -> list[str]:
    """The names the gateway's certificate gives it."""
    return names_of(x509.load_pem_x509_certificate(store.certificate_pem()))


def trust_root_files(keys_dir: Path) -> list[Path]:
    """``keys/ca.crt`` and the files of ``keys/trust/`` (sorted)."""
    folder = keys_dir / TRUST_DIR
    extra = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix in (".pem", ".crt")) if folder.is_dir() else []
    return [keys_dir / CA_CRT, *extra]


def trust_roots(keys_dir: Path) -> list[x509.Certificate]:
    """The certificates the gateway trusts as issuers (see TRUST_DIR)."""
    roots: list[x509.Certificate] = []
    for path in trust_root_files(keys_dir):
        roots += load_certificates(path.read_bytes(), str(path))
    return roots


@dataclass(frozen=True)
class Identity:
    """What the gateway presents in a TLS handshake."""

    key: Any
    certificate: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)


def gateway_identity(keys_dir: Path) -> Identity:
    """The gateway's key, certificate and (if a CA issued it) intermediates."""
    key = serialization.load_pem_private_key((keys_dir / GATEWAY_KEY).read_bytes(), None)
    cert = x509.load_pem_x509_certificate((keys_dir / GATEWAY_CRT).read_bytes())
    chain_path = keys_dir / CHAIN_FILE
    chain = load_certificates(chain_path.read_bytes(), str(chain_path)) \
        if chain_path.exists() else []
    return Identity(key, cert, chain)


# --- a request for a CA ------------------------------------------------------------
def signing_request(store: KeyStore, sans: Sequence[str] = ()) -> bytes:
    """A PKCS#10 request (PEM) for the gateway's key: CN = its PartyId, asking for
    serverAuth + clientAuth and the names ``sans`` (default: those of the current
    certificate)."""
    key = serialization.load_pem_private_key((store.keys_dir / GATEWAY_KEY).read_bytes(), None)
    names = list(sans) or gateway_names(store)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, store.party)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_names(names)),
                                        critical=False)
    csr = builder.sign(key, _sign_hash(key))  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


# --- installing what the CA issued ---------------------------------------------------
@dataclass(frozen=True)
class Installed:
    """An installed certificate: what it says, and what the operator should know."""

    subject: str
    issuer: str
    not_after: datetime
    names: list[str]
    intermediates: int
    backup: Path
    warnings: list[str]


def install_certificate(store: KeyStore, data: bytes, now: datetime | None = None) -> Installed:
    """Make the certificate in ``data`` (with any intermediates after it) the gateway's.

    Refused (CertificateRefused, nothing written) unless one certificate in it is for
    the gateway's key, is valid now, may serve TLS (serverAuth, if it lists usages) and
    chains to a trust root (keys/ca.crt or keys/trust/).  The certificate it replaces
    is kept as ``gateway.crt.<UTC time>``."""
    now = now or datetime.now(UTC)
    certs = load_certificates(data, "the file")
    leaf = _leaf_for_key(certs, store.signer().signer)
    rest = [c for c in certs if c is not leaf]
    _check_period(leaf, now)
    warnings = _check_usage(leaf)
    _check_chain(leaf, rest, trust_roots(store.keys_dir), store.keys_dir, now)
    backup = _replace_files(store.keys_dir, leaf, rest, now)
    return Installed(leaf.subject.rfc4514_string(), leaf.issuer.rfc4514_string(),
                     leaf.not_valid_after_utc, names_of(leaf), len(rest), backup, warnings)


def _leaf_for_key(certs: list[x509.Certificate], signer: str) -> x509.Certificate:
    for cert in certs:
        try:
            if signer_id(cert.public_key()) == signer:  # type: ignore[arg-type]
                return cert
        except (TypeError, ValueError):
            continue  # a key type the gateway never has
    found = ", ".join(cert.subject.rfc4514_string() for cert in certs)
    raise CertificateRefused(
        f"no certificate in the file is for this gateway's key (signer {signer}); it holds "
        f"{found}. The CA must sign the request `gateway csr` made in this home")


def _check_period(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateRefused(f"the certificate is not valid before "
                                 f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise CertificateRefused(f"the certificate expired "
                                 f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_usage(cert: x509.Certificate) -> list[str]:
    """Refuse a certificate that may not serve TLS; warn of one that may not be a
    client certificate (the gateway's dial-outs present it as one)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    warnings = []
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise CertificateRefused("the certificate's extended key usage lacks serverAuth: "
                                 "it cannot be the gateway's TLS server certificate")
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        warnings.append("no clientAuth in its extended key usage: peers the gateway dials "
                        "(peer add --connect) may refuse it as a client certificate")
    if not names_of(cert):
        warnings.append("no subjectAltName: TLS clients that check the gateway's name "
                        "will refuse it")
    return warnings


def _check_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                 roots: list[x509.Certificate], keys_dir: Path, now: datetime) -> None:
    """OpenSSL's own chain building, as a TLS peer will do it."""
    trusted = crypto.X509Store()
    for root in roots:
        trusted.add_cert(crypto.X509.from_cryptography(root))
    trusted.set_time(now)
    context = crypto.X509StoreContext(trusted, crypto.X509.from_cryptography(leaf),
                                      [crypto.X509.from_cryptography(c) for c in intermediates])
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        where = ", ".join(str(p.relative_to(keys_dir.parent)) for p in
                          trust_root_files(keys_dir))
        raise CertificateRefused(
            f"the certificate does not chain to a trust root ({where}): {exc}. Put the "
            f"issuing CA's root certificate in {keys_dir / TRUST_DIR}/ and any "
            "intermediates after the certificate in the file") from None


def _replace_files(keys_dir: Path, leaf: x509.Certificate,
                   intermediates: list[x509.Certificate], now: datetime) -> Path:
    old = keys_dir / GATEWAY_CRT
    backup = keys_dir / f"{GATEWAY_CRT}.{now:%Y%m%dT%H%M%SZ}"
    backup.write_bytes(old.read_bytes())
    _replace(old, leaf.public_bytes(serialization.Encoding.PEM))
    chain = keys_dir / CHAIN_FILE
    if intermediates:
        _replace(chain, b"".join(c.public_bytes(serialization.Encoding.PEM)
                                 for c in intermediates))
    elif chain.exists():
        chain.unlink()
    return backup


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --- certificates for peers ------------------------------------------------------------
def issue_peer_certificate(store: KeyStore, party: str, sans: Sequence[str] = ()) -> bytes:
    """A dev-CA certificate for the registered key of ``party``: its TLS client
    certificate (and server certificate, if the gateway dials it; ``sans`` then name
    it).  The peer's private key never leaves the peer: the certificate binds the key
    it registered."""
    peer = store.peer(party)
    if peer is None:
        raise ValueError(f"{party} is not registered (gateway peer add --id {party} …)")
    return store.issue_certificate(party, peer.public_key, sans)
