"""PROTOCOL §9 ``key rotate`` / ``key promote``: the gateway's own signing key, changed
without a flag day.

``rotate`` makes the next key and its certificate beside the current ones
(``keys/gateway.next.key``, ``.next.crt``); peers register that certificate as the
gateway's next key (``gateway cert --next``); ``promote`` renames them into place and a
running gateway signs with the new key within a second (server.RegistryWatch).  The
storage key is never touched: data sealed at rest stays readable.
"""
from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from . import registry
from .bookdate import CHINA
from .keystore import (
    CERT_DAYS,
    GATEWAY_CRT,
    GATEWAY_KEY,
    NEXT_CRT,
    NEXT_KEY,
    RETIRED_DIR,
    KeyStore,
    KeyStoreRefusal,
    _cert_pem,
    _fsync_dir,
    _new_private_key,
    _pkcs8,
    _sign_hash,
    _write_atomic,
    load_signer,
)
from .registry import PeerKey, key_letter
from .signature import Signer, load_public_key, signer_id


def next_certificate_pem(store: KeyStore) -> bytes:
    """The next key's certificate (PEM), for peers to register with ``--next``."""
    path = store.keys_dir / NEXT_CRT
    if not path.exists():
        raise KeyStoreRefusal("there is no next key: make one with `gateway key rotate`")
    return path.read_bytes()


def rotate(store: KeyStore, kind: str = "ES256", replace: bool = False) -> Signer:
    """``key rotate``: a next signing key and its certificate beside the current ones
    (which still sign)."""
    with store.locked():
        waiting = store.next_signer()
        if waiting is not None and not replace:
            raise KeyStoreRefusal(
                f"a next key is already waiting (signer {waiting.signer}): print it with "
                "`gateway cert --next`, make it the signing key with `gateway key "
                "promote`, or add --replace to make another one in its place")
        key, alg = _new_private_key(kind)
        cert = _successor_cert(x509.load_pem_x509_certificate(store.certificate_pem()),
                               key, datetime.now(UTC))
        _write_atomic(store.keys_dir / NEXT_KEY, _pkcs8(key), mode=0o600)
        _write_atomic(store.keys_dir / NEXT_CRT, _cert_pem(cert))
    return Signer(key, alg)


def promote(store: KeyStore) -> tuple[str, str]:
    """``key promote``: the next key signs from now on; the old certificate is kept in
    ``keys/retired/`` (to check old evidence), the old private key is deleted.  Returns
    (old signer, new signer).  Run again, it finishes a promote that was interrupted
    between its two renames (certificate, then key)."""
    keys = store.keys_dir
    with store.locked():
        nxt = store.next_signer()
        if nxt is None:
            raise KeyStoreRefusal("there is no next key to promote: make one with "
                                  "`gateway key rotate` and register it at every peer first")
        old = load_signer(keys / GATEWAY_KEY)
        cert_path = keys / NEXT_CRT
        if cert_path.exists():
            if signer_id(load_public_key(cert_path.read_bytes())) != nxt.signer:
                raise KeyStoreRefusal(f"{NEXT_CRT} is not the certificate of {NEXT_KEY}: "
                                      "make a new pair with `gateway key rotate --replace`")
            _retire_certificate(store)
            os.replace(cert_path, keys / GATEWAY_CRT)
        elif signer_id(load_public_key(store.certificate_pem())) != nxt.signer:
            raise KeyStoreRefusal(f"{NEXT_CRT} is missing: make a new pair with "
                                  "`gateway key rotate --replace`")
        os.replace(keys / NEXT_KEY, keys / GATEWAY_KEY)
        _fsync_dir(keys)
    store.reload_signer()
    return old.signer, nxt.signer


def own_letter(store: KeyStore, next_key: bool = False) -> str:
    """The key letter of the gateway's own (current or next) key."""
    pem = next_certificate_pem(store) if next_key else store.certificate_pem()
    cert = x509.load_pem_x509_certificate(pem)
    issued = (cert.not_valid_before_utc + timedelta(minutes=5)).astimezone(CHINA)
    key = PeerKey.from_pem(pem, issued.date().isoformat())
    return key_letter(party=store.party, role="GATEWAY", key=key,
                      status="next (not signing yet)" if next_key else "current",
                      gateway=store.party, printed=registry.today())


def _retire_certificate(store: KeyStore) -> None:
    pem = store.certificate_pem()
    retired = store.keys_dir / RETIRED_DIR
    retired.mkdir(exist_ok=True, mode=0o700)
    path = retired / f"gateway-{signer_id(load_public_key(pem))}.crt"
    if not path.exists():
        _write_atomic(path, pem)


#: What a successor certificate keeps of the current one (with its subject).
_KEPT_EXTENSIONS = (x509.SubjectAlternativeName, x509.ExtendedKeyUsage, x509.KeyUsage,
                    x509.BasicConstraints)


def _successor_cert(current: x509.Certificate, key: Any, now: datetime) -> x509.Certificate:
    """A self-signed certificate for ``key`` with the current certificate's subject,
    names (SAN), key usages and basic constraints: the same identity, a new key."""
    pk = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(current.subject)
        .public_key(pk)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pk), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pk), critical=False)
    )
    for ext in current.extensions:
        if isinstance(ext.value, _KEPT_EXTENSIONS):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(key, _sign_hash(key))
