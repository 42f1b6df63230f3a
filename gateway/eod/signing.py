"""Detached ``.sig`` files (PROTOCOL §8): raw signature bytes over the whole file.

ES256: DER ECDSA; Ed25519: the raw 64 bytes; RSA: PKCS#1 v1.5 (what
``openssl dgst -sha256 -sign`` makes) or PSS with a 32-byte salt.  ECDSA and RSA
are computed over the SHA-256 digest the streaming reader already has
(``Prehashed``), so the file is read once; pure Ed25519 has no pre-hashed form,
so it is given a read-only memory map of the file (file-backed pages, not heap).
"""
from __future__ import annotations

import mmap
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from gateway.signature import PublicKey, Signer

PSS_SALT = 32


class BadSignature(Exception):
    """The detached signature does not verify with the registered key."""


def _mapped(path: Path) -> tuple[mmap.mmap | bytes, object]:
    f = open(path, "rb")
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), f
    except ValueError:  # empty file cannot be mapped
        f.close()
        return b"", None


def sign_file(signer: Signer, path: Path, digest: bytes) -> bytes:
    """The detached signature of the file at ``path`` whose SHA-256 is ``digest``."""
    key, alg = signer.private_key, signer.alg
    sha = Prehashed(hashes.SHA256())
    if alg == "ES256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(digest, ec.ECDSA(sha))
    if alg == "PS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(digest, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT), sha)
    if alg == "RS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(digest, padding.PKCS1v15(), sha)
    data, handle = _mapped(path)
    try:
        return signer.sign(data).signature  # type: ignore[arg-type]
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
        if handle is not None:
            handle.close()  # type: ignore[attr-defined]


def _verify_rsa(key: rsa.RSAPublicKey, sig: bytes, digest: bytes) -> None:
    sha = Prehashed(hashes.SHA256())
    try:
        key.verify(sig, digest, padding.PKCS1v15(), sha)
    except InvalidSignature:
        key.verify(sig, digest, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT), sha)


def verify_file(public_key: PublicKey, sig: bytes, path: Path, digest: bytes) -> None:
    """Raise BadSignature unless ``sig`` is a valid signature of the file."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(public_key, rsa.RSAPublicKey):
            _verify_rsa(public_key, sig, digest)
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            _verify_ed25519(public_key, sig, path)
        else:
            raise BadSignature("unsupported key type")
    except (InvalidSignature, ValueError):
        raise BadSignature("signature does not verify") from None


def _verify_ed25519(public_key: ed25519.Ed25519PublicKey, sig: bytes, path: Path) -> None:
    data, handle = _mapped(path)
    try:
        public_key.verify(sig, data)  # type: ignore[arg-type]
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
        if handle is not None:
            handle.close()  # type: ignore[attr-defined]
