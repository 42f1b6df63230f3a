"""The console command of PROTOCOL §9, run as a user would (subprocess)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args],
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_of_the_protocol() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("init", "cert", "peer", "serve", "eod", "sim", "demo"):
        assert command in out.stdout


@pytest.mark.parametrize("args", [
    ("eod", "check"),                       # FILE missing
    ("eod", "check", "f.txt", "--jsno"),    # an unknown option
    ("eod", "export", "--type", "XFER"),    # --date and --to missing
    ("serve", "--listen"),                  # an option without its value
    ("serve", "--listen", "nope"),          # a malformed HOST:PORT
    ("sim", "bank", "--connect", "h:0"),    # a port out of range
    ("eod", "watch", ".", "--poll", "-1"),  # a duration that is no duration
    ("eod", "watch", ".", "--poll", "nan"),
    ("frobnicate",),                        # no such command
])
def test_a_usage_error_exits_64_never_eod_checks_2_for_rejected(args: tuple[str, ...],
                                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = run("--home", str(tmp_path), *args)
    assert out.returncode == 64, out.stderr
    assert "usage: gateway" in out.stderr and "error:" in out.stderr
    assert out.stdout == ""


def test_init_creates_owner_only_keys_and_refuses_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import stat

    first = run("--home", str(tmp_path), "init", "--party", "GW01")
    assert first.returncode == 0, first.stderr
    for name in ("gateway.key", "storage.key", "ca.key"):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    before = (tmp_path / "keys" / "gateway.key").read_bytes()
    second = run("--home", str(tmp_path), "init")
    assert second.returncode != 0
    assert "refused" in second.stderr
    assert (tmp_path / "keys" / "gateway.key").read_bytes() == before
    assert "PRIVATE KEY" not in first.stdout + first.stderr + second.stdout + second.stderr


def test_cert_and_peer_add_and_list(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    assert run("--home", str(tmp_path), "init").returncode == 0
    cert = run("--home", str(tmp_path), "cert")
    assert cert.returncode == 0 and cert.stdout.startswith("-----BEGIN CERTIFICATE-----")
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "ccb.pem"
    pem.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    added = run("--home", str(tmp_path), "peer", "add", "--id", "CCB", "--role", "BANK",
                "--cert", str(pem), "--connect", "127.0.0.1:7801")
    assert added.returncode == 0, added.stderr
    from gateway.signature import signer_id

    listed = run("--home", str(tmp_path), "peer", "list")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("CCB"))
    assert "BANK" in line and signer_id(key) in line and "127.0.0.1:7801" in line


def test_peer_add_rejects_bad_party_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run("--home", str(tmp_path), "init").returncode == 0
    pem = tmp_path / "x.pem"
    pem.write_text("not a pem")
    out = run("--home", str(tmp_path), "peer", "add", "--id", "ccb", "--role", "BANK",
              "--cert", str(pem))
    assert out.returncode != 0


def test_cert_without_init_tells_the_user_to_run_init(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = run("--home", str(tmp_path), "cert")
    assert out.returncode != 0
    assert "gateway init" in out.stderr
    assert "Traceback" not in out.stderr


def test_init_with_a_lowercase_party_is_refused_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = run("--home", str(tmp_path), "init", "--party", "gw")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "refused" in out.stderr and "[A-Z0-9]" in out.stderr
    assert not (tmp_path / "keys" / "gateway.key").exists()


def test_init_with_storage_key_but_no_gateway_key_writes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "storage.key").write_bytes(b"\x01" * 32)
    out = run("--home", str(tmp_path), "init")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert "storage.key" in out.stderr
    assert [p.name for p in keys.iterdir()] == ["storage.key"]
    assert (keys / "storage.key").read_bytes() == b"\x01" * 32


def _peer_files() -> tuple[bytes, bytes]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CCB")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    return priv, cert.public_bytes(serialization.Encoding.PEM)


def test_peer_add_refuses_a_file_with_a_private_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run("--home", str(tmp_path), "init").returncode == 0
    priv, cert = _peer_files()
    bundle = tmp_path / "ccb-bundle.pem"
    bundle.write_bytes(priv + cert)
    out = run("--home", str(tmp_path), "peer", "add", "--id", "CCB", "--role", "BANK",
              "--cert", str(bundle))
    assert out.returncode == 1
    assert "PRIVATE KEY" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1
    assert not (tmp_path / "keys" / "peers" / "CCB.pem").exists()
    body = priv.decode().splitlines()[1]
    for path in (tmp_path / "keys").rglob("*"):
        assert not path.is_file() or body.encode() not in path.read_bytes(), path
    (tmp_path / "ccb.crt").write_bytes(cert)
    ok = run("--home", str(tmp_path), "peer", "add", "--id", "CCB", "--role", "BANK",
             "--cert", str(tmp_path / "ccb.crt"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "keys" / "peers" / "CCB.pem").read_bytes() == cert


def test_peer_add_refuses_a_bad_connect_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run("--home", str(tmp_path), "init").returncode == 0
    _, cert = _peer_files()
    (tmp_path / "ccb.crt").write_bytes(cert)
    out = run("--home", str(tmp_path), "peer", "add", "--id", "CCB", "--role", "BANK",
              "--cert", str(tmp_path / "ccb.crt"), "--connect", "bank-host-without-port")
    assert out.returncode == 64  # a usage error
    assert "--connect" in out.stderr and "Traceback" not in out.stderr
    assert "CCB" not in run("--home", str(tmp_path), "peer", "list").stdout


def test_peer_add_warns_when_the_key_is_already_another_partys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run("--home", str(tmp_path), "init").returncode == 0
    _, cert = _peer_files()
    (tmp_path / "ccb.crt").write_bytes(cert)
    first = run("--home", str(tmp_path), "peer", "add", "--id", "CCB", "--role", "BANK",
                "--cert", str(tmp_path / "ccb.crt"))
    assert first.returncode == 0 and "warning" not in first.stderr
    second = run("--home", str(tmp_path), "peer", "add", "--id", "ICBC", "--role", "BANK",
                 "--cert", str(tmp_path / "ccb.crt"))
    assert second.returncode == 0
    assert "warning" in second.stderr and "CCB" in second.stderr


def _public_pem(path) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


@pytest.mark.parametrize(("registered", "new", "other"), [
    ("GTJA", "GTJAX", "GTJA"),   # a new id that begins with a peer's
    ("GTJAX", "GTJA", "GTJAX"),  # a new id that is the start of a peer's
    (None, "GW", "GW01"),        # the start of the gateway's own PartyId
    (None, "GW01A", "GW01"),     # begins with the gateway's own PartyId
    (None, "GW01", "GW01"),      # the gateway's own PartyId itself
])
def test_peer_add_refuses_a_party_id_that_is_a_prefix_of_another(
        tmp_path, registered: str | None, new: str, other: str) -> None:  # type: ignore[no-untyped-def]
    """§1: PartyIds at one gateway (its own included) are prefix-free, because every BizSn
    begins with its sender's (§4); the refusal is exit 1, one line, saying what to do."""
    home = str(tmp_path)
    assert run("--home", home, "init", "--party", "GW01").returncode == 0
    if registered is not None:
        first = run("--home", home, "peer", "add", "--id", registered, "--role", "BROKER",
                    "--cert", _public_pem(tmp_path / "first.pem"))
        assert first.returncode == 0, first.stderr
    out = run("--home", home, "peer", "add", "--id", new, "--role", "BROKER",
              "--cert", _public_pem(tmp_path / "new.pem"))
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("gateway peer add: refused:") and other in lines[0]
    assert "prefix" in lines[0] or "own PartyId" in lines[0]
    assert "register the peer under its own" in lines[0] or "choose an id" in lines[0]
    listed = run("--home", home, "peer", "list").stdout.split()
    assert new not in listed or new == registered
    assert not (tmp_path / "keys" / "peers" / f"{new}.pem").exists()


def test_peer_add_accepts_ids_that_only_share_a_beginning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GTJA, GTJB and GW02 beside the gateway GW01: no id is the start of another."""
    home = str(tmp_path)
    assert run("--home", home, "init", "--party", "GW01").returncode == 0
    for party in ("GTJA", "GTJB", "GW02"):
        out = run("--home", home, "peer", "add", "--id", party, "--role", "BROKER",
                  "--cert", _public_pem(tmp_path / f"{party}.pem"))
        assert out.returncode == 0, out.stderr
    listed = run("--home", home, "peer", "list").stdout
    assert all(f"\n{p} " in listed for p in ("GTJA", "GTJB", "GW02"))


#: ``gateway …`` with every journal commit failing once there is something to commit.
FAILING_JOURNAL = """
import sys
from gateway import cli, journal

real = journal.Journal.flush

def flush(self):
    if self.dirty:
        raise OSError("disk full (test)")
    return real(self)

journal.Journal.flush = flush
sys.exit(cli.main(sys.argv[1:]))
"""


def _serve(tmp_path, *prefix: str) -> tuple[subprocess.Popen[str], int]:  # type: ignore[no-untyped-def]
    import re
    import time

    assert run("--home", str(tmp_path), "init").returncode == 0
    proc = subprocess.Popen([sys.executable, *prefix, "--home", str(tmp_path), "serve",
                             "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"serving on [\d.]+:(\d+)", line)
        if found:
            return proc, int(found.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("gateway serve did not start")


def test_serve_exits_non_zero_when_the_journal_flush_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    proc, port = _serve(tmp_path, "-c", FAILING_JOURNAL)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # E100: a SYS.ERROR to journal
            assert proc.wait(30) == 1
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "journal flush failed" in rest and "could not be committed" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_serve_exits_zero_on_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal

    proc, _ = _serve(tmp_path, "-m", "gateway")
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_serve_that_cannot_listen_exits_1_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A port already taken: one line and exit 1, never a gateway running deaf."""
    import socket

    assert run("--home", str(tmp_path), "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run("--home", str(tmp_path), "serve", "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 1, out.stderr
    assert out.stderr.count(f"Couldn't listen on 127.0.0.1:{port}") == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "h ost:7700", "[]:7700", "host:٣",
                                    "::7700", "a]:1", "[a:1"])
def test_a_bad_listen_in_gateway_toml_is_a_configuration_error(
        listen: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run("--home", str(tmp_path), "init").returncode == 0
    (tmp_path / "gateway.toml").write_text(f'[gateway]\nlisten = "{listen}"\n', encoding="utf-8")
    out = run("--home", str(tmp_path), "serve")
    assert out.returncode == 1, out.stderr
    assert "is not HOST:PORT" in out.stderr and "Traceback" not in out.stderr
