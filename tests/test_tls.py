"""`gateway serve --tls`: TLS 1.2+, client certificate required and bound to the
registered key of the party that logs on (§5.1)."""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import BANK, BROKER, GatewayHome, RunningGateway, make_home
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
    assert rsp.type == "SYS.LOGON.RSP" and rsp.body["Result"] == "E203"
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


# --- issue 18 defect 7: TLS that works end to end with what ships ------------------------


def gateway_cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=timeout)


def handshake_lines(gw, port: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in gw.log if f"127.0.0.1:{port}" in line or f"port={port})" in line]


def wait_for_port_line(gw, port: int, timeout: float = 10) -> str:  # type: ignore[no-untyped-def]
    return gw.wait_for_log(rf"TLS handshake with 127\.0\.0\.1:{port} failed: ", timeout)


def self_signed(tmp: Path, cn: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_file, cert_file = tmp / f"{cn}-ss.key", tmp / f"{cn}-ss.crt"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_each_failed_handshake_is_one_line_with_the_address_and_why(home, start_gateway,
                                                                    tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("--tls")
    ports: dict[str, int] = {}

    probe = socket.create_connection(("127.0.0.1", gw.port))  # a TCP health probe
    ports["probe"] = probe.getsockname()[1]
    probe.close()

    plain = socket.create_connection(("127.0.0.1", gw.port))  # a plain-TCP client
    ports["plain"] = plain.getsockname()[1]
    plain.sendall(b"00000010hello, gw!")

    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.load_verify_locations(cafile=str(home.root / "keys" / "gateway.crt"))
    raw = socket.create_connection(("127.0.0.1", gw.port))
    ports["no certificate"] = raw.getsockname()[1]
    with pytest.raises((ssl.SSLError, OSError)):
        conn = no_cert.wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"x")
        conn.recv(1)

    why = {name: wait_for_port_line(gw, port) for name, port in ports.items()}
    assert "closed before the handshake" in why["probe"]
    assert "INFO" in why["probe"]  # a probe is routine
    assert "not a TLS client" in why["plain"]
    assert "peer did not return a certificate" in why["no certificate"]

    # a certificate for another party, from an issuer the gateway does not trust
    untrusted = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    untrusted.load_verify_locations(cafile=str(home.root / "keys" / "gateway.crt"))
    untrusted.load_cert_chain(*reversed(self_signed(tmp_path, "GTJA")))
    raw = socket.create_connection(("127.0.0.1", gw.port))
    ports["untrusted"] = raw.getsockname()[1]
    with pytest.raises((ssl.SSLError, OSError)):
        conn = untrusted.wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"x")
        conn.recv(1)

    why["untrusted"] = wait_for_port_line(gw, ports["untrusted"])
    assert "client certificate CN=GTJA is not trusted: self-signed certificate" in why["untrusted"]
    plain.close()
    time.sleep(1.5)  # past the close grace, when the old code's _abort raised
    for name, port in ports.items():
        assert len(handshake_lines(gw, port)) == 1, (name, handshake_lines(gw, port))
    text = gw.log_text()
    assert "Traceback" not in text and "session S" not in text, text  # no session was made
    assert "Warning" not in text, text


def test_a_connection_that_never_handshakes_is_cut_after_tls_handshake_seconds(
        home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway("--tls", tls_handshake_seconds=1.0)
    silent = socket.create_connection(("127.0.0.1", gw.port))  # never says anything
    port = silent.getsockname()[1]
    started = time.monotonic()
    silent.settimeout(10)
    try:
        assert silent.recv(1) == b""  # the gateway hung up…
    except ConnectionResetError:
        pass  # …or cut it (abort)
    assert 0.8 < time.monotonic() - started < 5
    assert "no TLS handshake within 1 s" in wait_for_port_line(gw, port)
    silent.close()


def test_serve_tls_starts_and_serves_without_a_warning(home, start_gateway, tmp_path,
                                                       monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # every DeprecationWarning (pyOpenSSL's X509/PKey ones) is an error in the gateway
    monkeypatch.setenv("PYTHONWARNINGS", "error::DeprecationWarning")
    gw = start_gateway("--tls")
    key = home.keys[BROKER]
    ctx = client_context(home.root, tmp_path, key, issue(home.root, BROKER, key.public_key()))
    broker = gw.peer(BROKER, tls=ctx).open_session()
    assert broker.request("SYS.ECHO.REQ", [("Text", "hi")]).body["Text"] == "hi"
    broker.close()
    assert gw.stop() == 0
    text = gw.log_text()
    assert "Warning" not in text and "deprecated" not in text and "Traceback" not in text, text


# --- the reference peers over TLS -------------------------------------------------------------
class SimProcess:
    """``gateway sim`` in a subprocess, its output collected."""

    def __init__(self, home: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--home", str(home), "sim", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"never saw {pattern!r}:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture
def tls_gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A TLS gateway with no peers yet; the sims' homes register with it as an operator
    would (peer add with the sim's public key, peer issue for its certificate)."""
    gw_home = make_home(tmp_path / "gw", parties={})
    gw = RunningGateway(gw_home, "--tls")
    sims: list[SimProcess] = []

    def sim(role: str, party: str, *args: str, register: bool = True,
            issue_cert: bool = True) -> SimProcess:
        from gateway.sim.runtime import ensure_key

        sim_home = tmp_path / party.lower()
        pub = ensure_key(sim_home, party)
        if register:
            out = gateway_cli(gw_home.root, "peer", "add", "--id", party, "--role",
                              role.upper(), "--cert", str(pub), "--replace")
            assert out.returncode == 0, out.stderr
        if issue_cert:
            out = gateway_cli(gw_home.root, "peer", "issue", "--id", party, "--out",
                              str(sim_home / "keys" / f"{party}.crt"))
            assert out.returncode == 0, out.stderr
        running = SimProcess(sim_home, role, "--party", party, "--connect",
                             f"127.0.0.1:{gw.port}", "--gateway-cert",
                             str(gw_home.root / "keys" / "gateway.crt"), *args)
        sims.append(running)
        return running

    yield gw, sim
    for running in sims:
        running.stop()
    gw.kill()


def test_sim_with_tls_logs_on_over_mutual_tls(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, sim = tls_gateway
    bank = sim("bank", "CCB", "--tls")
    bank.wait_for("dialling the gateway at .* over TLS")
    bank.wait_for("CCB ready on session")
    gw.wait_for_log("CCB logged on as BANK")
    assert bank.stop() == 0
    assert "Traceback" not in "".join(bank.lines) + gw.log_text()


def test_sim_without_a_certificate_says_how_to_get_one(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    _, sim = tls_gateway
    bank = sim("bank", "CCB", "--tls", issue_cert=False)
    assert bank.proc.wait(30) == 1
    assert "gateway peer issue --id CCB" in "".join(bank.lines)


def _waits(lines: list[str]) -> list[float]:
    return [float(m.group(1)) for line in lines
            if (m := re.search(r"failed: .*; dialling again in ([\d.]+) s", line))]


def test_plain_sim_at_a_tls_gateway_says_why_and_backs_off(tls_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, sim = tls_gateway
    bank = sim("bank", "CCB", issue_cert=False)  # no --tls
    deadline = time.monotonic() + 20
    while len(_waits(bank.lines)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    waits = _waits(bank.lines)
    assert len(waits) >= 4, "".join(bank.lines)
    assert waits == sorted(waits) and waits[-1] > waits[0], waits  # backing off
    assert "without --tls" in bank.wait_for("session with the gateway at .* failed")
    gw.wait_for_log("TLS handshake with .* failed: .*not a TLS client")


def test_tls_sim_that_does_not_trust_the_gateway_says_why(tls_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, sim = tls_gateway
    # trusting the dev CA, which did not issue the gateway's self-signed certificate
    bank = sim("bank", "CCB", "--tls", "--tls-ca", str(tmp_path / "gw" / "keys" / "ca.crt"))
    line = bank.wait_for("session with the gateway at .* failed")
    assert "TLS handshake: the gateway's certificate chain" in line
    assert "self-signed certificate" in line and "--tls-ca" in line


# --- the gateway's certificate: names, a CSR, a CA-issued certificate ----------------------
def test_init_san_names_the_gateway_in_its_certificate(tmp_path: Path) -> None:
    out = gateway_cli(tmp_path, "init", "--san", "gw.bank.example", "10.1.2.3", "fd00::7")
    assert out.returncode == 0, out.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "keys" / "gateway.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gw.bank.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("10.1.2.3"),
                                                       ipaddress.ip_address("fd00::7")]
    assert "gw.bank.example" in out.stdout


def test_init_refuses_a_name_that_is_neither_dns_nor_ip(tmp_path: Path) -> None:
    out = gateway_cli(tmp_path, "init", "--san", "gw bank")
    assert out.returncode == 1 and "neither a DNS name nor an IP address" in out.stderr
    assert not (tmp_path / "keys" / "gateway.key").exists()


class TestCA:
    """A bank's CA: a root and an intermediate that signs requests."""

    __test__ = False

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Bank Root CA")])
        self.root = self._ca(root_name, self.root_key.public_key(), root_name, self.root_key, now)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Bank Issuing CA")])
        self.intermediate = self._ca(name, self.key.public_key(), root_name, self.root_key, now)

    @staticmethod
    def _ca(subject, public_key, issuer, key, now):  # type: ignore[no-untyped-def]
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1))
                .not_valid_after(now + timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))

    def sign(self, csr_pem: bytes) -> bytes:
        """Issue what the request asks for (its subject and extensions), chained."""
        csr = x509.load_pem_x509_csr(csr_pem)
        assert csr.is_signature_valid
        now = datetime.now(UTC)
        builder = (x509.CertificateBuilder().subject_name(csr.subject)
                   .issuer_name(self.intermediate.subject).public_key(csr.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(days=10)))
        for ext in csr.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        cert = builder.sign(self.key, hashes.SHA256())
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (cert, self.intermediate))

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)


def test_csr_and_installing_the_ca_issued_certificate(tmp_path: Path) -> None:
    gw = tmp_path / "gw"
    assert gateway_cli(gw, "init").returncode == 0
    signer_before = gateway_cli(gw, "peer", "list").stdout  # nothing yet; the key below
    key_before = x509.load_pem_x509_certificate((gw / "keys" / "gateway.crt").read_bytes())
    out = gateway_cli(gw, "csr", "--san", "gw.bank.example", "127.0.0.1", "--out",
                      str(tmp_path / "gw.csr"))
    assert out.returncode == 0, out.stderr
    csr = x509.load_pem_x509_csr((tmp_path / "gw.csr").read_bytes())
    assert csr.public_key() == key_before.public_key()
    assert csr.subject.rfc4514_string() == "CN=GW01"
    ca = TestCA()
    issued = tmp_path / "issued.pem"
    issued.write_bytes(ca.sign((tmp_path / "gw.csr").read_bytes()))

    # not installed while its root is not a configured trust root: nothing changes
    before = (gw / "keys" / "gateway.crt").read_bytes()
    out = gateway_cli(gw, "cert", "--install", str(issued))
    assert out.returncode == 1 and "does not chain to a trust root" in out.stderr
    assert (gw / "keys" / "gateway.crt").read_bytes() == before

    (gw / "keys" / "trust").mkdir()
    (gw / "keys" / "trust" / "bank-root.pem").write_bytes(ca.root_pem())
    out = gateway_cli(gw, "cert", "--install", str(issued))
    assert out.returncode == 0, out.stderr
    assert "issued by CN=Test Bank Issuing CA" in out.stdout
    now = x509.load_pem_x509_certificate(gateway_cli(gw, "cert").stdout.encode())
    assert now.issuer == ca.intermediate.subject
    assert now.public_key() == key_before.public_key()  # same key: peers' signer holds
    assert list((gw / "keys").glob("gateway.crt.*"))  # the old one kept
    assert signer_before == gateway_cli(gw, "peer", "list").stdout

    # served with its intermediate: a client trusting only the bank's root checks the name
    from gateway.keystore import KeyStore

    broker_key = ec.generate_private_key(ec.SECP256R1())
    store = KeyStore(gw / "keys")
    store.add_peer(BROKER, "BROKER", broker_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    running = RunningGateway(_home_of(gw, {BROKER: broker_key}), "--tls")
    try:
        (tmp_path / "root.pem").write_bytes(ca.root_pem())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(tmp_path / "root.pem"))
        (tmp_path / "b.key").write_bytes(broker_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (tmp_path / "b.crt").write_bytes(store.issue_certificate(BROKER,
                                                                 broker_key.public_key()))
        ctx.load_cert_chain(str(tmp_path / "b.crt"), str(tmp_path / "b.key"))
        raw = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        conn = ctx.wrap_socket(raw, server_hostname="gw.bank.example")
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        conn.close()
    finally:
        running.kill()


def _home_of(root: Path, keys: dict[str, ec.EllipticCurvePrivateKey]) -> GatewayHome:
    from gateway.keystore import KeyStore

    return GatewayHome(root, keys, KeyStore(root / "keys").signer().public_key)


def test_install_refuses_a_certificate_for_another_key(tmp_path: Path) -> None:
    assert gateway_cli(tmp_path, "init").returncode == 0
    other = ec.generate_private_key(ec.SECP256R1())
    from gateway.keystore import KeyStore

    pem = KeyStore(tmp_path / "keys").issue_certificate("GW01", other.public_key())
    (tmp_path / "other.pem").write_bytes(pem)
    before = (tmp_path / "keys" / "gateway.crt").read_bytes()
    out = gateway_cli(tmp_path, "cert", "--install", str(tmp_path / "other.pem"))
    assert out.returncode == 1 and "for this gateway's key" in out.stderr
    assert (tmp_path / "keys" / "gateway.crt").read_bytes() == before


def test_peer_issue_certifies_the_registered_key_with_the_dev_ca(home) -> None:  # type: ignore[no-untyped-def]
    out = gateway_cli(home.root, "peer", "issue", "--id", BANK)
    assert out.returncode == 0, out.stderr
    cert = x509.load_pem_x509_certificate(out.stdout.encode())
    ca = x509.load_pem_x509_certificate((home.root / "keys" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == home.keys[BANK].public_key()
    assert cert.subject.rfc4514_string() == f"CN={BANK}"
    out = gateway_cli(home.root, "peer", "issue", "--id", "NOBODY")
    assert out.returncode == 1 and "not registered" in out.stderr


def test_demo_tls_runs_the_day_over_mutual_tls_and_exits_zero(tmp_path: Path) -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-m", "gateway",
                          "demo", "--tls", "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    assert "one business day over mutual TLS" in out.stdout
    assert "ok  every session over mutual TLS: 2 of 2" in out.stdout
    assert "RESULT: every step did what it should" in out.stdout
    assert "Traceback" not in out.stderr and "Warning" not in out.stderr
