"""Detached ``.sig`` files (PROTOCOL §8): raw signature bytes over the whole file.

ES256: DER ECDSA; Ed25519: the raw 64 bytes; RSA: PKCS#1 v1.5 (what
``openssl dgst -sha256 -sign`` makes) or PSS with a 32-byte salt.  ECDSA and RSA
are computed over the SHA-256 digest the streaming reader already has
(``Prehashed``), so the file is read once; pure Ed25519 has no pre-hashed form,
so it is given a read-only memory map of the file (file-backed pages, not heap).

A ``.sig`` holds one signature: at most ``MAX_SIGNATURE_BYTES``; a larger one is
refused from its size, never read (a sparse 600 MiB ``.sig`` once took 632 MiB).
"""
from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from gateway.signature import PublicKey, Signer

PSS_SALT = 32
#: The largest ``.sig`` read: RSA-8192 makes 1024 bytes, RSA-4096 512, ES256 DER ≤ 72,
#: Ed25519 64.
MAX_SIGNATURE_BYTES = 1024


class BadSignature(Exception):
    """The detached signature does not verify with the registered key."""


class UnfitSignatureFile(Exception):
    """The ``.sig`` is no regular file, or too large to hold a signature."""


def read_signature(fd: int, name: str) -> bytes:
    """The bytes of the opened ``.sig`` called ``name``; never more than
    ``MAX_SIGNATURE_BYTES + 1`` are read, whatever its size."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnfitSignatureFile(f"signature file {name} is not a regular file")
    if st.st_size > MAX_SIGNATURE_BYTES:
        raise UnfitSignatureFile(_too_large(name, f"{st.st_size} bytes"))
    data = b""
    while chunk := os.read(fd, MAX_SIGNATURE_BYTES + 1 - len(data)):
        data += chunk
        if len(data) > MAX_SIGNATURE_BYTES:  # it grew since fstat
            raise UnfitSignatureFile(_too_large(name, f"over {MAX_SIGNATURE_BYTES} bytes"))
    return data


def _too_large(name: str, size: str) -> str:
    return (f"signature file {name} is {size}; a signature is at most "
            f"{MAX_SIGNATURE_BYTES} bytes")


def _mapped(fd: int) -> mmap.mmap | bytes:
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except ValueError:  # empty file cannot be mapped
        return b""


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
    with open(path, "rb") as f:
        data = _mapped(f.fileno())
        try:
            return signer.sign(data).signature  # type: ignore[arg-type]
        finally:
            if isinstance(data, mmap.mmap):
                data.close()


def _verify_rsa(key: rsa.RSAPublicKey, sig: bytes, digest: bytes) -> None:
    sha = Prehashed(hashes.SHA256())
    try:
        key.verify(sig, digest, padding.PKCS1v15(), sha)
    except InvalidSignature:
        key.verify(sig, digest, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT), sha)


def verify_file(public_key: PublicKey, sig: bytes, file: BinaryIO, digest: bytes) -> None:
    """Raise BadSignature unless ``sig`` is a valid signature of the opened ``file``
    whose SHA-256 is ``digest``."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(public_key, rsa.RSAPublicKey):
            _verify_rsa(public_key, sig, digest)
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            _verify_ed25519(public_key, sig, file)
        else:
            raise BadSignature("unsupported key type")
    except (InvalidSignature, ValueError):
        raise BadSignature("signature does not verify") from None


def _verify_ed25519(public_key: ed25519.Ed25519PublicKey, sig: bytes, file: BinaryIO) -> None:
    data = _mapped(file.fileno())
    try:
        public_key.verify(sig, data)  # type: ignore[arg-type]
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
