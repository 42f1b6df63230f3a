"""Key store: init, file modes, certificates, peers."""
from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.keystore import (
    KeyStore,
    KeyStoreExists,
    KeyStoreMissing,
    generate_key_file,
    load_signer,
)
from gateway.signature import signer_id, verify

PRIVATE_FILES = ("gateway.key", "storage.key", "ca.key")


def _pub_pem(pk) -> bytes:  # type: ignore[no-untyped-def]
    return pk.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _self_signed(key, cn: str) -> bytes:  # type: ignore[no-untyped-def]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture()
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.create(tmp_path / "keys", party="GW01")


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreMissing, match="gateway init"):
        KeyStore(tmp_path / "keys")


def test_create_twice_refuses(tmp_path: Path, store: KeyStore) -> None:
    before = (store.keys_dir / "gateway.key").read_bytes()
    with pytest.raises(KeyStoreExists):
        KeyStore.create(store.keys_dir, party="GW02")
    assert (store.keys_dir / "gateway.key").read_bytes() == before
    assert KeyStore(store.keys_dir).party == "GW01"


def test_private_modes(store: KeyStore) -> None:
    for name in PRIVATE_FILES:
        assert stat.S_IMODE(os.stat(store.keys_dir / name).st_mode) == 0o600, name
    assert len(store.storage_key()) == 32


def test_gateway_cert_and_ca(store: KeyStore) -> None:
    cert = x509.load_pem_x509_certificate(store.certificate_pem())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "GW01"
    assert signer_id(cert.public_key()) == store.signer().signer
    assert store.signer().alg == "ES256"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=3640)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    ca = x509.load_pem_x509_certificate(store.ca_cert_pem())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # sign with the gateway key, verify with the cert key
    f = store.signer().sign(b"<x/>")
    verify(cert.public_key(), f, b"<x/>")


def test_issue_certificate(store: KeyStore) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    pem = store.issue_certificate("CCB", k.public_key())
    cert = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate(store.ca_cert_pem())
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == k.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_peers_round_trip(store: KeyStore) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    p1 = store.add_peer("CCB", "BANK", _self_signed(rsa_key, "CCB"), connect="127.0.0.1:7001")
    p2 = store.add_peer("GTJA", "BROKER", _pub_pem(ed_key.public_key()))
    assert (p1.key_type, p2.key_type) == ("RSA", "ED25519")
    assert p1.signer == signer_id(rsa_key.public_key())
    reopened = KeyStore(store.keys_dir)
    peers = reopened.peers()
    assert [p.party for p in peers] == ["CCB", "GTJA"]
    assert peers == [p1, p2]
    assert reopened.peer("CCB") == p1 and reopened.peer("ICBC") is None
    assert reopened.peer_by_signer(p2.signer) == p2
    assert reopened.peer_by_signer("0" * 16) is None
    assert peers[0].connect == "127.0.0.1:7001" and peers[1].connect is None
    # another key for a registered party: only with replace (§9 peer add --replace)
    new_ec = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="--replace"):
        store.add_peer("CCB", "BANK", _pub_pem(new_ec.public_key()))
    assert KeyStore(store.keys_dir).peer("CCB") == p1
    p3 = store.add_peer("CCB", "BANK", _pub_pem(new_ec.public_key()), replace=True)
    assert KeyStore(store.keys_dir).peer("CCB") == p3 and p3.key_type == "EC-P256"
    assert len(store.peers()) == 2


@pytest.mark.parametrize("make", [
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    lambda: ec.generate_private_key(ec.SECP384R1()),
])
def test_reject_weak_or_other_keys(store: KeyStore, make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    for pem in (_pub_pem(key.public_key()), _self_signed(key, "BAD")):
        with pytest.raises(ValueError):
            store.add_peer("BAD", "BANK", pem)
    assert store.peers() == []


def test_bad_party_or_role(store: KeyStore) -> None:
    pem = _pub_pem(ed25519.Ed25519PrivateKey.generate().public_key())
    for party, role in [("ccb", "BANK"), ("C", "BANK"), ("ABCDEFGHIJKLM", "BANK"), ("CCB", "CLIENT")]:
        with pytest.raises(ValueError):
            store.add_peer(party, role, pem)
    with pytest.raises(ValueError):
        store.add_peer("CCB", "BANK", b"garbage")


def test_a_party_id_that_is_a_prefix_of_another_is_refused_before_anything_is_written(
        store: KeyStore) -> None:
    """§1 prefix-free PartyIds, the gateway's own (GW01) counted."""
    pem = _pub_pem(ed25519.Ed25519PrivateKey.generate().public_key())
    store.add_peer("GTJA", "BROKER", pem)
    for party in ("GTJAX", "GTJ", "GW", "GW01", "GW01B"):
        with pytest.raises(ValueError, match="prefix|own PartyId"):
            store.add_peer(party, "BROKER", pem)
        assert not (store.keys_dir / "peers" / f"{party}.pem").exists()
    assert [p.party for p in store.peers()] == ["GTJA"]
    assert store.add_peer("GTJB", "BROKER", pem).party == "GTJB"


@pytest.mark.parametrize("kind,alg", [("ES256", "ES256"), ("ED25519", "ED25519"), ("PS256", "PS256")])
def test_generate_and_load_key_file(tmp_path: Path, kind: str, alg: str) -> None:
    path = tmp_path / f"{kind}.key"
    s = generate_key_file(path, kind)
    assert s.alg == alg
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    loaded = load_signer(path)
    assert loaded.signer == s.signer and loaded.alg == alg
    with pytest.raises(FileExistsError):
        generate_key_file(path, kind)


@pytest.mark.parametrize("party", ["gw", "G", "GW-1", "ABCDEFGHIJKLM", ""])
def test_create_with_a_bad_party_writes_nothing(tmp_path: Path, party: str) -> None:
    with pytest.raises(ValueError, match=r"\[A-Z0-9\]\{2,12\}"):
        KeyStore.create(tmp_path / "keys", party=party)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("name", ["gateway.key", "storage.key", "ca.key", "ca.crt",
                                  "gateway.crt", "gateway.json"])
def test_create_refuses_if_any_store_file_exists_and_writes_nothing(tmp_path: Path,
                                                                     name: str) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / name).write_bytes(b"left over")
    with pytest.raises(KeyStoreExists, match=name):
        KeyStore.create(keys, party="GW01")
    assert [p.name for p in keys.iterdir()] == [name]
    assert (keys / name).read_bytes() == b"left over"


def test_create_losing_a_race_removes_what_it_wrote(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import gateway.keystore as ks

    keys = tmp_path / "keys"
    real = ks._write_new

    def racing(path: Path, data: bytes) -> None:
        if path.name == "gateway.crt":  # another init got there first
            path.write_bytes(b"theirs")
        real(path, data)

    monkeypatch.setattr(ks, "_write_new", racing)
    with pytest.raises(KeyStoreExists):
        KeyStore.create(keys, party="GW01")
    assert sorted(p.name for p in keys.iterdir() if p.is_file()) == ["gateway.crt"]
    assert (keys / "gateway.crt").read_bytes() == b"theirs"


def _priv_pem(k) -> bytes:  # type: ignore[no-untyped-def]
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
@pytest.mark.parametrize("key_first", [True, False])
def test_peer_file_with_a_private_key_is_refused_and_nothing_stored(
        store: KeyStore, fmt, key_first: bool) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    cert = _self_signed(key, "CCB")
    with pytest.raises(ValueError, match="PRIVATE KEY"):
        store.add_peer("CCB", "BANK", priv + cert if key_first else cert + priv)
    assert not (store.keys_dir / "peers" / "CCB.pem").exists()
    assert store.peers() == []


def test_only_the_reserialised_certificate_or_public_key_is_stored(store: KeyStore) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(rsa_key, "CCB")
    extra = _self_signed(ec.generate_private_key(ec.SECP256R1()), "OTHER")
    store.add_peer("CCB", "BANK", b"Bag Attributes: junk\n" + cert + extra + b"trailing text\n")
    assert (store.keys_dir / "peers" / "CCB.pem").read_bytes() == cert
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    store.add_peer("GTJA", "BROKER", b"# comment\n" + _pub_pem(ed) + b"more\n")
    assert (store.keys_dir / "peers" / "GTJA.pem").read_bytes() == _pub_pem(ed)


@pytest.mark.parametrize("connect", ["nohost", "host:", ":7700", "host:port", "host:99999",
                                     "host:0", "ho st:7700"])
def test_peer_with_a_bad_connect_address_is_refused(store: KeyStore, connect: str) -> None:
    pem = _pub_pem(ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ValueError, match="--connect"):
        store.add_peer("CCB", "BANK", pem, connect=connect)
    assert store.peers() == [] and not (store.keys_dir / "peers" / "CCB.pem").exists()


def test_good_connect_addresses_are_kept(store: KeyStore) -> None:
    pem = _pub_pem(ed25519.Ed25519PrivateKey.generate().public_key())
    for connect in ("10.0.0.7:7801", "bank.example:7700", "[::1]:7700"):
        assert store.add_peer("CCB", "BANK", pem, connect=connect).connect == connect


def test_parties_with_the_same_key(store: KeyStore) -> None:
    pem = _pub_pem(ed25519.Ed25519PrivateKey.generate().public_key())
    a = store.add_peer("CCB", "BANK", pem)
    store.add_peer("ICBC", "BANK", pem)
    assert store.parties_with_key(a.signer) == ["CCB", "ICBC"]
