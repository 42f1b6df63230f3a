"""`gateway serve --tls`: TLS 1.2+, client certificate required and bound to the
registered key of the party that logs on (§5.1)."""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import BANK, BROKER
from flows import accept_gateway_logon, call, signed, xfer


def client_context(home_root: Path, tmp: Path, key: ec.EllipticCurvePrivateKey,
                   cert_pem: bytes) -> ssl.SSLContext:
    key_file, cert_file = tmp / "client.key", tmp / "client.crt"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(home_root / "keys" / "gateway.crt"))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def issue(home_root: Path, party: str, public_key: object) -> bytes:
    from gateway.keystore import KeyStore

    return KeyStore(home_root / "keys").issue_certificate(party, public_key)


def test_client_certificate_of_the_registered_key_works(home, start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("--tls")
    key = home.keys[BROKER]
    ctx = client_context(home.root, tmp_path, key, issue(home.root, BROKER, key.public_key()))
    broker = gw.peer(BROKER, tls=ctx).open_session()
    rsp = broker.request("SYS.ECHO.REQ", [("Text", "over tls")])
    assert rsp.body["Text"] == "over tls"
    assert broker.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]


def test_certificate_issued_for_another_key_is_refused(home, start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("--tls")
    other = ec.generate_private_key(ec.SECP256R1())
    # a perfectly valid CA-issued certificate naming the broker, but for another key
    ctx = client_context(home.root, tmp_path, other, issue(home.root, BROKER, other.public_key()))
    broker = gw.peer(BROKER, tls=ctx).connect()
    rsp = broker.logon()
    assert rsp.type == "SYS.ERROR" and rsp.body["Code"] == "E203"
    assert broker.closed_by_gateway()
    gw.wait_for_log("TLS client certificate is not GTJA's registered key")


def test_connection_without_client_certificate_is_refused(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("--tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(home.root / "keys" / "gateway.crt"))
    broker = gw.peer(BROKER, tls=ctx)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        broker.connect()
        broker.logon()


def test_plain_tcp_to_a_tls_port_gets_nothing_usable(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("--tls")
    broker = gw.peer(BROKER).connect()
    with pytest.raises((ConnectionError, TimeoutError, ValueError)):
        broker.logon()


def dialled_bank_listener(home, tmp: Path, key: ec.EllipticCurvePrivateKey):  # type: ignore[no-untyped-def]
    """A bank that the gateway dials, serving TLS with a dev-CA certificate for ``key``
    and requiring the gateway's certificate as the client certificate."""
    from gateway.keystore import KeyStore

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(15)
    pem = home.keys[BANK].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    KeyStore(home.root / "keys").add_peer(BANK, "BANK", pem,
                                          connect=f"127.0.0.1:{listener.getsockname()[1]}")
    key_file, cert_file = tmp / "bank.key", tmp / "bank.crt"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(issue(home.root, BANK, key.public_key()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(home.root / "keys" / "gateway.crt"))
    return listener, ctx


def test_dial_out_is_tls_with_the_gateways_certificate(home, start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509

    listener, ctx = dialled_bank_listener(home, tmp_path, home.keys[BANK])
    gw = start_gateway("--tls")
    raw, _ = listener.accept()
    conn = ctx.wrap_socket(raw, server_side=True)  # needs the gateway's client certificate
    assert conn.version() in ("TLSv1.2", "TLSv1.3")
    presented = x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))
    ours = x509.load_pem_x509_certificate((home.root / "keys" / "gateway.crt").read_bytes())
    assert presented == ours
    bank = gw.peer(BANK)
    bank.sock = conn  # type: ignore[assignment]
    accept_gateway_logon(bank)
    key = home.keys[BROKER]
    broker_ctx = client_context(home.root, tmp_path, key, issue(home.root, BROKER,
                                                                key.public_key()))
    broker = gw.peer(BROKER, tls=broker_ctx).open_session()
    signed(bank, broker)
    assert call(broker, "XFER.OUT.REQ", xfer("GTJATLS1"), bank=bank).body["Result"] == "0000"
    listener.close()


def test_dial_out_refuses_a_peer_certificate_for_another_key(home, start_gateway,
                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    listener, ctx = dialled_bank_listener(home, tmp_path, ec.generate_private_key(ec.SECP256R1()))
    gw = start_gateway("--tls")
    raw, _ = listener.accept()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        conn = ctx.wrap_socket(raw, server_side=True)
        conn.settimeout(5)
        conn.recv(1)  # nothing (no LOGON) ever comes over it
    gw.wait_for_log("its TLS certificate is not CCB's registered key")
    listener.close()
