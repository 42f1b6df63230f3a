"""Signatures (all algs, openssl interop) and security negatives with result codes."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.errors import DecryptionFailed, MacInvalid, SignatureInvalid, UnknownSigner
from gateway.fieldcrypto import StorageCipher, decrypt_field, encrypt_field
from gateway.mac import mac_field, verify_mac
from gateway.signature import (
    SignatureField,
    Signer,
    allowed_algs,
    key_type,
    load_public_key,
    signer_id,
    verify,
)

XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<Msg xmlns="urn:sbdx:1"><Head/></Msg>\n'
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not available")

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key(alg: str):  # type: ignore[no-untyped-def]
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    return _RSA


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


def _secret_forms(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), secret.hex().upper()]


def _pub_pem(pk) -> bytes:  # type: ignore[no-untyped-def]
    return pk.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _priv_pem(k) -> bytes:  # type: ignore[no-untyped-def]
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


@pytest.mark.parametrize("alg", ["ES256", "ED25519", "PS256", "RS256"])
def test_sign_verify_all_algs(alg: str) -> None:
    s = Signer(_key(alg), None if alg != "RS256" else "RS256")
    assert s.alg == alg
    assert alg in allowed_algs(s.public_key)
    field = s.sign(XML)
    assert field.signer == s.signer == signer_id(s.public_key)
    parsed = SignatureField.parse(field.format())
    assert parsed == field
    verify(load_public_key(_pub_pem(s.public_key)), parsed, XML)
    with pytest.raises(SignatureInvalid) as ei:
        verify(s.public_key, field, XML + b" ")
    assert ei.value.code == "E202"


def test_key_types_and_defaults() -> None:
    assert Signer(_RSA).alg == "PS256"
    assert key_type(_RSA.public_key()) == "RSA"
    assert key_type(ec.generate_private_key(ec.SECP256R1()).public_key()) == "EC-P256"
    with pytest.raises(ValueError):
        Signer(ec.generate_private_key(ec.SECP256R1()), "PS256")
    with pytest.raises(ValueError):
        load_public_key(_pub_pem(ec.generate_private_key(ec.SECP384R1()).public_key()))


def test_alg_not_allowed_for_key() -> None:
    s = Signer(_RSA, "PS256")
    f = s.sign(XML)
    with pytest.raises(SignatureInvalid) as ei:
        verify(s.public_key, SignatureField("ES256", f.signer, f.signature), XML)
    assert ei.value.code == "E202"


@pytest.mark.parametrize("text", ["", "-", "ES256:abc", "XX256:0123456789abcdef:AAAA",
                                  "ES256:0123456789abcdef:!!!", "ES256:0123456789ABCDEF:AAAA"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(SignatureInvalid) as ei:
        SignatureField.parse(text)
    assert ei.value.code == "E202"


# --- negatives with codes ------------------------------------------------------
def test_flipped_mac_byte_e200() -> None:
    key = os.urandom(32)
    field = mac_field(key, XML)
    raw = base64.b64decode(field[6:])
    bad = "HS256:" + base64.b64encode(_flip(raw, 5)).decode()
    for candidate in (bad, None, "-", "HS512:" + field[6:], "HS256:***"):
        with pytest.raises(MacInvalid) as ei:
            verify_mac(key, XML, candidate)
        assert ei.value.code == "E200"
        msg = str(ei.value)
        assert all(s not in msg for s in _secret_forms(key) + _secret_forms(raw))
        assert field[6:] not in msg


def test_flipped_sig_byte_e202() -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    s = Signer(k)
    f = s.sign(XML)
    bad = SignatureField(f.alg, f.signer, _flip(f.signature, len(f.signature) - 1))
    with pytest.raises(SignatureInvalid) as ei:
        verify(s.public_key, bad, XML)
    assert ei.value.code == "E202"
    d = k.private_numbers().private_value.to_bytes(32, "big")
    assert all(x not in str(ei.value) for x in _secret_forms(d) + _secret_forms(f.signature))


def test_other_signer_e203() -> None:
    a, b = Signer(ec.generate_private_key(ec.SECP256R1())), Signer(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(UnknownSigner) as ei:
        verify(a.public_key, b.sign(XML), XML)
    assert ei.value.code == "E203"


def test_field_decrypt_failures_e209() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    pt = "110101199003071234"
    value = encrypt_field(key, "M1", "IdNo", pt, nonce)
    raw = base64.b64decode(value)
    cases = [
        ("M1", "IdNo", base64.b64encode(_flip(raw, 15)).decode()),  # ciphertext byte
        ("M1", "IdNo", base64.b64encode(_flip(raw, len(raw) - 1)).decode()),  # tag byte
        ("M2", "IdNo", value),  # wrong AAD (MsgId)
        ("M1", "Phone", value),  # wrong AAD (element)
        ("M1", "IdNo", "not base64 ***"),
        ("M1", "IdNo", base64.b64encode(b"short").decode()),
    ]
    for msg_id, element, v in cases:
        with pytest.raises(DecryptionFailed) as ei:
            decrypt_field(key, msg_id, element, v)
        assert ei.value.code == "E209"
        msg = str(ei.value)
        assert pt not in msg and all(s not in msg for s in _secret_forms(key))
    assert decrypt_field(key, "M1", "IdNo", value) == pt


def test_storage_cipher() -> None:
    key = os.urandom(32)
    c = StorageCipher(key)
    tok = c.seal("13800138000", "wallet/1/Phone")
    assert tok.startswith("v1:")
    assert c.open(tok, "wallet/1/Phone") == "13800138000"
    assert c.seal("x", "c") != c.seal("x", "c")
    for t, ctx in [(tok, "wallet/2/Phone"), ("v2:" + tok[3:], "wallet/1/Phone"), ("v1:@@", "wallet/1/Phone")]:
        with pytest.raises(DecryptionFailed) as ei:
            c.open(t, ctx)
        assert ei.value.code == "E209"
        assert key.hex() not in str(ei.value) and "13800138000" not in str(ei.value)
    assert key.hex() not in repr(c)


# --- openssl interop -----------------------------------------------------------
def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([OPENSSL or "openssl", *args], capture_output=True, check=False)


SAMPLE = Path(__file__).parent / "samples" / "valid" / "XFER.OUT.REQ.xml"


class _Wire:
    """A session link that keeps the frames the gateway writes."""

    def __init__(self) -> None:
        from gateway.framing import FrameDecoder

        self.decoder = FrameDecoder()
        self.payloads: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.payloads.extend(self.decoder.feed(data))

    def close(self) -> None:
        pass

    def peer_public_key(self) -> None:
        return None


def _gateway_relays(tmp_path: Path, xml: bytes) -> bytes:
    """``gateway init`` in ``tmp_path``, then the payload (envelope LF xml) the gateway
    writes when it relays ``xml`` on a session."""
    import time

    from gateway.config import Config
    from gateway.journal import Journal
    from gateway.keystore import KeyStore
    from gateway.relay import Gateway
    from gateway.session import Session

    store = KeyStore.create(tmp_path / "keys", party="GW01")
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        gw = Gateway(Config(), store, journal, time.time)
        wire = _Wire()
        session = Session(gw, wire, "S1")
        session.relay_xml(xml, "XFER.OUT.REQ", "GTJA20261125000019", None)
        gw.flush()
    finally:
        journal.close()
    assert len(wire.payloads) == 1
    return wire.payloads[0]


@needs_openssl
def test_gateway_signature_on_a_relayed_message_verifies_with_openssl(tmp_path: Path) -> None:
    """§3: what the gateway sends is checkable with stock tools — its init key, its
    certificate, a real message and the sig field of the envelope it wrote."""
    from gateway.envelope import split_payload

    xml = SAMPLE.read_bytes()
    envelope, sent = split_payload(_gateway_relays(tmp_path, xml))
    assert sent == xml  # the bytes relayed are the bytes signed
    assert envelope.sig is not None
    alg, signer, b64 = envelope.sig.split(":")
    assert alg == "ES256"
    (tmp_path / "msg.xml").write_bytes(sent)
    (tmp_path / "sig.der").write_bytes(base64.b64decode(b64, validate=True))
    cert = tmp_path / "keys" / "gateway.crt"
    r = _run("x509", "-in", str(cert), "-pubkey", "-noout", "-out", str(tmp_path / "pub.pem"))
    assert r.returncode == 0, r.stderr
    der = _run("pkey", "-pubin", "-in", str(tmp_path / "pub.pem"), "-outform", "DER")
    assert der.returncode == 0, der.stderr
    assert signer == hashlib.sha256(der.stdout).hexdigest()[:16]  # §3 signer, by openssl
    r = _run("dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature",
             str(tmp_path / "sig.der"), str(tmp_path / "msg.xml"))
    assert r.returncode == 0, r.stderr
    assert b"Verified OK" in r.stdout
    (tmp_path / "msg.xml").write_bytes(sent.replace(b"<Amount>", b"<Amount>1", 1))
    r = _run("dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature",
             str(tmp_path / "sig.der"), str(tmp_path / "msg.xml"))
    assert r.returncode != 0 and b"Verified OK" not in r.stdout


@needs_openssl
@pytest.mark.parametrize("alg", ["PS256", "RS256", "ED25519"])
def test_gateway_signatures_of_other_algs_verify_with_openssl(tmp_path: Path, alg: str) -> None:
    from gateway.keystore import generate_key_file

    key_file = tmp_path / "key.pem"
    signer = generate_key_file(key_file, alg)
    assert signer.alg == alg
    xml = SAMPLE.read_bytes()
    field = SignatureField.parse(signer.sign(xml).format())
    msg, sig, pub = tmp_path / "msg.xml", tmp_path / "sig.bin", tmp_path / "pub.pem"
    msg.write_bytes(xml)
    sig.write_bytes(field.signature)
    assert _run("pkey", "-in", str(key_file), "-pubout", "-out", str(pub)).returncode == 0
    if alg == "ED25519":
        args = ["pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in", str(msg),
                "-sigfile", str(sig)]
    else:
        pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
               "-sigopt", "rsa_mgf1_md:sha256"] if alg == "PS256" else []
        args = ["dgst", "-sha256", "-verify", str(pub), *pss, "-signature", str(sig), str(msg)]
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    assert b"Verified" in r.stdout  # "Verified OK" (dgst), "Signature Verified Successfully"


@needs_openssl
@pytest.mark.parametrize("alg", ["ES256", "PS256", "RS256", "ED25519"])
def test_openssl_signatures_verify(tmp_path: Path, alg: str) -> None:
    k = _key(alg)
    xml = SAMPLE.read_bytes()
    key_pem, msg, sig = tmp_path / "key.pem", tmp_path / "msg.xml", tmp_path / "sig.bin"
    key_pem.write_bytes(_priv_pem(k))
    msg.write_bytes(xml)
    if alg in ("ES256", "RS256"):  # RSA: openssl's default padding is PKCS#1 v1.5
        args = ["dgst", "-sha256", "-sign", str(key_pem), "-out", str(sig), str(msg)]
    elif alg == "PS256":
        args = ["dgst", "-sha256", "-sign", str(key_pem), "-sigopt", "rsa_padding_mode:pss",
                "-sigopt", "rsa_pss_saltlen:32", "-out", str(sig), str(msg)]
    else:
        args = ["pkeyutl", "-sign", "-rawin", "-inkey", str(key_pem), "-in", str(msg), "-out", str(sig)]
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    pk = k.public_key()
    field = SignatureField.parse(f"{alg}:{signer_id(pk)}:{base64.b64encode(sig.read_bytes()).decode()}")
    verify(pk, field, xml)
    with pytest.raises(SignatureInvalid):
        verify(pk, field, xml + b"x")
    if alg in ("PS256", "RS256"):  # the other RSA padding must not pass for this one
        other = "RS256" if alg == "PS256" else "PS256"
        with pytest.raises(SignatureInvalid):
            verify(pk, SignatureField(other, field.signer, field.signature), xml)
