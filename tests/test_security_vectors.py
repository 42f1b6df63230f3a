"""Known-answer vectors of PROTOCOL §3–§5 (tests/vectors, made independently)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import catalog, kex
from gateway.errors import DecryptionFailed, SchemaInvalid
from gateway.fieldcrypto import decrypt_field, encrypt_field
from gateway.mac import mac_field, verify_mac
from gateway.signature import SignatureField, load_public_key, signer_id, verify

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text("utf-8"))


def test_kex_vector_independent() -> None:
    v = load("kex.json")
    ipriv = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["initiator_private"]))
    rpriv = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["responder_private"]))
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert base64.b64encode(ipriv.public_key().public_bytes(*raw)).decode() == v["initiator_public_b64"]
    assert base64.b64encode(rpriv.public_key().public_bytes(*raw)).decode() == v["responder_public_b64"]
    rpub = X25519PublicKey.from_public_bytes(base64.b64decode(v["responder_public_b64"]))
    ipub = X25519PublicKey.from_public_bytes(base64.b64decode(v["initiator_public_b64"]))
    shared = ipriv.exchange(rpub)
    assert shared == rpriv.exchange(ipub)
    assert shared.hex() == v["shared_secret"]
    salt = bytes.fromhex(v["initiator_nonce"]) + bytes.fromhex(v["responder_nonce"])
    okm = HKDF(hashes.SHA256(), 64, salt, b"SBDX1 " + v["key_id"].encode()).derive(shared)
    assert okm[:32].hex() == v["mac_key"]
    assert okm[32:].hex() == v["data_key"]
    kcv = hmac.new(okm[:32], b"SBDX KCV", hashlib.sha256).hexdigest()[:8]
    assert kcv == v["kcv"]


def test_kex_vector_module() -> None:
    v = load("kex.json")
    ini = kex.Ephemeral.from_private_bytes(bytes.fromhex(v["initiator_private"]))
    res = kex.Ephemeral.from_private_bytes(bytes.fromhex(v["responder_private"]))
    assert ini.public_b64 == v["initiator_public_b64"]
    assert res.public_b64 == v["responder_public_b64"]
    assert ini.exchange(res.public_b64).hex() == v["shared_secret"]
    rk = kex.respond(res, ini.public_b64, v["initiator_nonce"], v["responder_nonce"], v["key_id"])
    assert (rk.mac_key.hex(), rk.data_key.hex(), rk.kcv) == (v["mac_key"], v["data_key"], v["kcv"])
    ik = kex.complete(ini, res.public_b64, v["initiator_nonce"], v["responder_nonce"],
                      v["key_id"], rk.kcv)
    assert ik == rk
    assert v["mac_key"] not in repr(ik) and v["data_key"] not in repr(ik)
    gen = kex.Ephemeral.generate(lambda n: bytes.fromhex(v["initiator_private"])[:n])
    assert gen.public_b64 == v["initiator_public_b64"]


def test_kex_failures() -> None:
    import pytest

    v = load("kex.json")
    ini = kex.Ephemeral.from_private_bytes(bytes.fromhex(v["initiator_private"]))
    for bad in ("not base64!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(bytes(32)).decode()):
        with pytest.raises(kex.KeyExchangeFailed):
            ini.exchange(bad)
    with pytest.raises(kex.KeyExchangeFailed):
        kex.complete(ini, v["responder_public_b64"], v["initiator_nonce"], v["responder_nonce"],
                     v["key_id"], "00000000")


def test_mac_vector() -> None:
    v = load("mac.json")
    key, xml = bytes.fromhex(v["mac_key"]), base64.b64decode(v["xml_b64"])
    assert mac_field(key, xml) == v["mac_field"]
    verify_mac(key, xml, v["mac_field"])


def test_field_encryption_vector() -> None:
    v = load("field_encryption.json")
    key = bytes.fromhex(v["data_key"])
    got = encrypt_field(key, v["msg_id"], v["element"], v["plaintext"], bytes.fromhex(v["nonce"]))
    assert got == v["value"]
    assert decrypt_field(key, v["msg_id"], v["element"], v["value"]) == v["plaintext"]


def test_field_encryption_custname_vector() -> None:
    """§4: CustName is encrypted like IdNo; its plaintext is UTF-8 (Chinese here)."""
    v = load("field_encryption_custname.json")
    key, nonce = bytes.fromhex(v["data_key"]), bytes.fromhex(v["nonce"])
    assert v["element"] == "CustName"
    assert "CustName" in catalog.ENCRYPTED_FIELDS["CtsSignReq"]
    got = encrypt_field(key, v["msg_id"], "CustName", v["plaintext"], nonce)
    assert got == v["value"]
    assert decrypt_field(key, v["msg_id"], "CustName", v["value"]) == v["plaintext"]
    # independently: AES-256-GCM, AAD = MsgId/element, value = nonce ‖ ciphertext ‖ tag
    raw = base64.b64decode(v["value"])
    assert raw[:12] == nonce and len(raw) == 12 + len(v["plaintext"].encode()) + 16
    aad = f"{v['msg_id']}/CustName".encode()
    assert AESGCM(key).decrypt(nonce, raw[12:], aad).decode("utf-8") == v["plaintext"]
    with pytest.raises(DecryptionFailed):  # bound to its element: not an IdNo
        decrypt_field(key, v["msg_id"], "IdNo", v["value"])


@pytest.mark.parametrize("name", ["", "张" * 61], ids=["empty", "61-chars"])
def test_a_decrypted_custname_outside_its_length_is_e111_naming_it(name: str) -> None:
    key = bytes(range(32))
    value = encrypt_field(key, "GTJA1", "CustName", name, bytes(12))
    with pytest.raises(SchemaInvalid) as info:
        decrypt_field(key, "GTJA1", "CustName", value)
    assert info.value.code == "E111"
    assert str(info.value.text).startswith("Msg/Body/CtsSignReq/CustName:")
    sixty = encrypt_field(key, "GTJA1", "CustName", "张" * 60, bytes(12))
    assert decrypt_field(key, "GTJA1", "CustName", sixty) == "张" * 60  # characters, not bytes


def test_signature_vector() -> None:
    v = load("signature.json")
    pk = load_public_key(v["public_key_pem"].encode())
    assert signer_id(pk) == v["signer"]
    field = SignatureField.parse(v["sig_field"])
    assert field.alg == "ES256" and field.signer == v["signer"]
    assert field.format() == v["sig_field"]
    verify(pk, field, base64.b64decode(v["xml_b64"]))
