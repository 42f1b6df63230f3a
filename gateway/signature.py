"""Envelope signatures (PROTOCOL §3): ES256, ED25519, PS256, RS256."""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.errors import SignatureInvalid, UnknownSigner

ALGS = ("ES256", "ED25519", "PS256", "RS256")
MIN_RSA_BITS = 2048
PSS_SALT = 32

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

_SIGNER_RE = re.compile(r"[0-9a-f]{16}")


#: signer ids of the key objects in use (the key is kept so its id() stays its own)
_SIGNER_IDS: dict[int, tuple[PublicKey, str]] = {}


def signer_id(public_key: PublicKey) -> str:
    """First 16 lowercase hex chars of SHA-256 of the DER SubjectPublicKeyInfo."""
    known = _SIGNER_IDS.get(id(public_key))
    if known is not None and known[0] is public_key:
        return known[1]
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signer = hashlib.sha256(der).hexdigest()[:16]
    if len(_SIGNER_IDS) >= 1024:
        _SIGNER_IDS.clear()
    _SIGNER_IDS[id(public_key)] = (public_key, signer)
    return signer


def _check_supported(pk: object) -> PublicKey:
    if isinstance(pk, ec.EllipticCurvePublicKey):
        if not isinstance(pk.curve, ec.SECP256R1):
            raise ValueError(f"unsupported EC curve {pk.curve.name}; only P-256")
        return pk
    if isinstance(pk, ed25519.Ed25519PublicKey):
        return pk
    if isinstance(pk, rsa.RSAPublicKey):
        if pk.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key too small ({pk.key_size} bits); need >= {MIN_RSA_BITS}")
        return pk
    raise ValueError("unsupported key type; only EC P-256, Ed25519, RSA >= 2048")


def load_public_key(pem: bytes) -> PublicKey:
    """Load a PUBLIC KEY or CERTIFICATE PEM; only EC P-256, Ed25519, RSA >= 2048."""
    pk: object
    if b"-----BEGIN CERTIFICATE-----" in pem:
        pk = x509.load_pem_x509_certificate(pem).public_key()
    elif b"-----BEGIN PUBLIC KEY-----" in pem:
        pk = serialization.load_pem_public_key(pem)
    else:
        raise ValueError("expected a PUBLIC KEY or CERTIFICATE PEM")
    return _check_supported(pk)


def key_type(pk: PublicKey) -> str:
    """Return ``EC-P256``, ``ED25519`` or ``RSA``."""
    pk = _check_supported(pk)
    if isinstance(pk, ec.EllipticCurvePublicKey):
        return "EC-P256"
    if isinstance(pk, ed25519.Ed25519PublicKey):
        return "ED25519"
    return "RSA"


def allowed_algs(pk: PublicKey) -> tuple[str, ...]:
    """Signature algorithms allowed for the key."""
    kind = key_type(pk)
    return tuple(name for name, a in ALGORITHMS.items() if a.key_type == kind)


@dataclass(frozen=True)
class SignatureField:
    """The envelope ``sig`` field: ``ALG:signer:base64``."""

    alg: str
    signer: str
    signature: bytes

    def format(self) -> str:
        """Render as ``ALG:signer:base64``."""
        return f"{self.alg}:{self.signer}:{base64.b64encode(self.signature).decode('ascii')}"

    @classmethod
    def parse(cls, text: str) -> SignatureField:
        """Parse ``ALG:signer:base64``; raise SignatureInvalid on bad syntax."""
        if not isinstance(text, str) or text in ("", "-"):
            raise SignatureInvalid("signature missing")
        parts = text.split(":")
        if len(parts) != 3:
            raise SignatureInvalid("signature field malformed")
        alg, signer, b64 = parts
        if alg not in ALGS:
            raise SignatureInvalid("unknown signature algorithm")
        if not _SIGNER_RE.fullmatch(signer):
            raise SignatureInvalid("signer id malformed")
        try:
            sig = base64.b64decode(b64.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise SignatureInvalid("signature is not valid base64") from None
        if not sig:
            raise SignatureInvalid("signature empty")
        return cls(alg, signer, sig)


#: Stateless algorithm objects, built once (one per call cost ~2 µs each on the hot path).
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT)
_PKCS1 = padding.PKCS1v15()


def _ec(key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("ES256 needs an EC P-256 key")
    return key


def _ed(key: object) -> ed25519.Ed25519PrivateKey:
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError("ED25519 needs an Ed25519 key")
    return key


def _rsa(key: object) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("PS256/RS256 need an RSA key")
    return key


def _ec_pub(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an EC key")
    return key


def _ed_pub(key: object) -> ed25519.Ed25519PublicKey:
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key


def _rsa_pub(key: object) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return key


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One §3 signature algorithm: the key type it takes, how it signs and verifies
    (``verify`` raises InvalidSignature or ValueError)."""

    name: str
    key_type: str
    sign: Callable[[PrivateKey, bytes], bytes]
    verify: Callable[[PublicKey, bytes, bytes], None]


#: The §3 algorithms as a typed table: no branching on strings at the call sites.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("ES256", "EC-P256",
              lambda k, d: _ec(k).sign(d, _ECDSA_SHA256),
              lambda k, s, d: _ec_pub(k).verify(s, d, _ECDSA_SHA256)),
    Algorithm("ED25519", "ED25519",
              lambda k, d: _ed(k).sign(d),
              lambda k, s, d: _ed_pub(k).verify(s, d)),
    Algorithm("PS256", "RSA",
              lambda k, d: _rsa(k).sign(d, _PSS, hashes.SHA256()),
              lambda k, s, d: _rsa_pub(k).verify(s, d, _PSS, hashes.SHA256())),
    Algorithm("RS256", "RSA",
              lambda k, d: _rsa(k).sign(d, _PKCS1, hashes.SHA256()),
              lambda k, s, d: _rsa_pub(k).verify(s, d, _PKCS1, hashes.SHA256())),
)}
assert tuple(ALGORITHMS) == ALGS


class Signer:
    """Signs xml bytes with a long-term private key."""

    def __init__(self, private_key: PrivateKey, alg: str | None = None) -> None:
        pk = _check_supported(private_key.public_key())
        allowed = allowed_algs(pk)
        if alg is None:
            alg = allowed[0]
        if alg not in allowed:
            raise ValueError(f"algorithm {alg} not allowed for {key_type(pk)} key")
        self._key = private_key
        self._algorithm = ALGORITHMS[alg]
        self.alg: str = alg
        self.public_key: PublicKey = pk
        self.signer: str = signer_id(pk)

    def __repr__(self) -> str:
        return f"Signer(alg={self.alg!r}, signer={self.signer!r})"

    @property
    def private_key(self) -> PrivateKey:
        """The private key (for serialisation by the key store)."""
        return self._key

    def sign(self, data: bytes) -> SignatureField:
        """Sign ``data`` and return the envelope field."""
        return SignatureField(self.alg, self.signer, self._algorithm.sign(self._key, data))


def verify(public_key: PublicKey, field: SignatureField, data: bytes) -> None:
    """Check ``field`` over ``data`` with the registered key of the party."""
    if field.signer != signer_id(public_key):
        raise UnknownSigner("signer is not the registered key of the party")
    try:
        allowed = allowed_algs(public_key)
    except ValueError:
        raise SignatureInvalid("unsupported key type") from None
    if field.alg not in allowed:
        raise SignatureInvalid("algorithm not allowed for the signer's key")
    try:
        ALGORITHMS[field.alg].verify(public_key, field.signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid("signature does not verify") from None
