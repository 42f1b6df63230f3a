"""On-disk keys: the gateway's signing key and certificate, dev CA, storage key, peers."""
from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import registry
from gateway.config import ConfigError, address_list_text, check_address_list, is_postgresql
from gateway.registry import ROLES, Peer, PeerKey, RegistryRefusal, key_letter
from gateway.registrystore import FileRegistry, RegistryStore, home_registry_url
from gateway.signature import PublicKey, Signer, key_type, load_public_key, signer_id

__all__ = ["KeyStore", "KeyStoreExists", "KeyStoreMissing", "KeyStoreRefusal", "Peer",
           "PeerKey", "RegistryRefusal", "generate_key_file", "load_signer"]

log = logging.getLogger(__name__)

PARTY_RE = re.compile(r"[A-Z0-9]{2,12}")
CERT_DAYS = 3650
#: Names every certificate ``gateway init`` makes carries, besides ``init --san``'s:
#: sims and health checks on the gateway's own host dial these.
DEFAULT_SANS = ("localhost", "127.0.0.1")

GATEWAY_KEY = "gateway.key"
GATEWAY_CRT = "gateway.crt"
STORAGE_KEY = "storage.key"
CA_KEY = "ca.key"
CA_CRT = "ca.crt"
GATEWAY_JSON = "gateway.json"
PEERS_JSON = "peers.json"
PEERS_DIR = "peers"
#: ``key rotate`` writes the next signing key and its certificate here.
NEXT_KEY = "gateway.next.key"
NEXT_CRT = "gateway.next.crt"
#: Certificates and peer keys no longer in force, kept to check old evidence.
RETIRED_DIR = "retired"
LOCK_FILE = ".lock"
#: The files ``gateway init`` creates; it refuses if any one of them exists.
INIT_FILES = (GATEWAY_KEY, STORAGE_KEY, CA_KEY, CA_CRT, GATEWAY_CRT, GATEWAY_JSON)


class KeyStoreExists(Exception):
    """``gateway init`` would overwrite existing keys."""


class KeyStoreMissing(Exception):
    """No key store yet: ``gateway init`` has not been run."""


class KeyStoreRefusal(ValueError):
    """A ``key`` command cannot be done now; the text says what to do."""


# --- file helpers ---------------------------------------------------------------
def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 exclusively (never overwrite) and write ``data``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            path.unlink()
        except OSError:
            pass
        raise


def _write_new(path: Path, data: bytes) -> None:
    """Create a public file ``path`` (0644) exclusively and write ``data``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file (created ``mode``) then ``os.replace`` it over
    ``path``: a reader sees the old file or the new one, never part of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pkcs8(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _sign_hash(key: Any) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _leaf_cert(
    subject_cn: str,
    public_key: Any,
    issuer_name: x509.Name | None,
    signing_key: Any,
    now: datetime,
    sans: Sequence[str],
    issuer_public_key: Any,
) -> x509.Certificate:
    """A leaf (CA:FALSE, serverAuth + clientAuth) for ``public_key``; ``sans`` become
    its subjectAltName (DNS names and IP addresses), none: no such extension."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_names(sans)),
                                        critical=False)
    return builder.sign(signing_key, _sign_hash(signing_key))


_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*\.?")


def san_name(text: str) -> x509.GeneralName:
    """One subjectAltName entry: an IP address (v4 or v6) or a DNS name (a leading
    ``*.`` allowed), else ValueError saying which."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    if len(name) > 253 or not name.isascii() or not _DNS_NAME.fullmatch(name):
        raise ValueError(f"subjectAltName {text[:80]!r} is neither a DNS name nor an IP "
                         "address")
    return x509.DNSName(name.rstrip("."))


def san_names(texts: Sequence[str]) -> list[x509.GeneralName]:
    """The subjectAltName entries of ``texts``, in order, each once."""
    names: list[x509.GeneralName] = []
    for text in texts:
        name = san_name(text)
        if name not in names:
            names.append(name)
    return names


# --- key files ----------------------------------------------------------------
def generate_key_file(path: Path, kind: str = "ES256") -> Signer:
    """Generate a private key (ES256, ED25519, PS256/RSA-2048) into a new 0600 PKCS#8 file."""
    key, alg = _new_private_key(kind)
    _write_private(Path(path), _pkcs8(key))
    return Signer(key, alg)


def load_signer(path: Path) -> Signer:
    """Load a PKCS#8 PEM private key file as a Signer (default algorithm)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
        raise ValueError("unsupported private key type")
    return Signer(key)


def check_party(party: object) -> str:
    """A PartyId of §1 (``[A-Z0-9]{2,12}``), else ValueError."""
    if not isinstance(party, str) or not PARTY_RE.fullmatch(party):
        raise ValueError(f"party id {str(party)[:20]!r} must match [A-Z0-9]{{2,12}}")
    return party


def public_pem(pem: bytes) -> bytes:
    """The certificate (PEM) or SubjectPublicKeyInfo (PEM) in ``pem``, re-serialised so
    that nothing else in the file is kept; a file with a private key is refused."""
    if b"PRIVATE KEY" in pem:
        raise ValueError("the file holds a PRIVATE KEY: register only the peer's certificate "
                         "or public key (the private key never leaves the peer)")
    pk = load_public_key(pem)  # ValueError for anything else or an unsupported key
    if b"-----BEGIN CERTIFICATE-----" in pem:
        return _cert_pem(x509.load_pem_x509_certificate(pem))
    return pk.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)


def check_connect(connect: str) -> tuple[tuple[str, int], ...]:
    """A peer's dial-out address: ``HOST:PORT`` as ``serve`` parses it, port 1–65535, or
    a comma-separated list of them, tried in turn (PROTOCOL §12)."""
    try:
        return check_address_list(connect)
    except ConfigError as exc:
        raise ValueError(f"--connect: {exc}") from None


def _dev_ca(party: str, now: datetime) -> tuple[Any, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"SBDX dev CA {party}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _new_store_files(party: str, now: datetime,
                     sans: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
    """Every file ``gateway init`` writes: name -> (content, private)."""
    gw_key = ec.generate_private_key(ec.SECP256R1())
    ca_key, ca_cert = _dev_ca(party, now)
    gw_cert = _leaf_cert(party, gw_key.public_key(), None, gw_key, now,
                         [*DEFAULT_SANS, *sans], gw_key.public_key())
    return {
        GATEWAY_KEY: (_pkcs8(gw_key), True),
        STORAGE_KEY: (os.urandom(32), True),
        CA_KEY: (_pkcs8(ca_key), True),
        CA_CRT: (_cert_pem(ca_cert), False),
        GATEWAY_CRT: (_cert_pem(gw_cert), False),
        GATEWAY_JSON: (json.dumps({"party": party}, indent=2).encode() + b"\n", False),
    }


def _write_all_or_nothing(keys_dir: Path, files: dict[str, tuple[bytes, bool]]) -> None:
    """Create every file exclusively (private ones 0600 from the start); if one cannot
    be created (it appeared meanwhile), remove those this call made and refuse."""
    made: list[Path] = []
    try:
        for name, (data, private) in files.items():
            path = keys_dir / name
            (_write_private if private else _write_new)(path, data)
            made.append(path)
    except FileExistsError as exc:
        _remove(made)
        raise KeyStoreExists(f"{exc.filename} appeared during init; not overwriting") from None
    except BaseException:
        _remove(made)
        raise


def _remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


# --- the store ----------------------------------------------------------------
class KeyStore:
    """The gateway's key directory."""

    def __init__(self, keys_dir: Path, registry_url: str | None = None) -> None:
        """``registry_url``: a postgresql:// url keeps the peer registry in that store
        (PROTOCOL §12); None: the home's ``[journal] url`` decides (``keys_dir``'s
        parent is the home), else ``keys/peers.json``."""
        self.keys_dir = Path(keys_dir)
        if not (self.keys_dir / GATEWAY_KEY).exists():
            raise KeyStoreMissing(f"no gateway key in {self.keys_dir}: run `gateway init` first")
        self._signer: Signer | None = None
        self.registry = self._registry_store(registry_url)
        self._peer_cache: tuple[Hashable, dict[str, Peer]] | None = None
        self._bad_stamp: Hashable | None = None
        #: Look at peers.json on every lookup (else only at :meth:`refresh`).
        self.check_every_lookup = True

    def __repr__(self) -> str:
        return f"KeyStore({str(self.keys_dir)!r})"

    @classmethod
    def create(cls, keys_dir: Path, party: str = "GW01", now: datetime | None = None,
               sans: Sequence[str] = ()) -> KeyStore:
        """Create a fresh key store; the gateway certificate names DEFAULT_SANS and
        ``sans`` (DNS names, IP addresses).  Refuses before writing anything:
        ValueError for a bad party id or name, KeyStoreExists if any file of the store
        is already there."""
        keys_dir = Path(keys_dir)
        check_party(party)
        san_names(sans)
        existing = [name for name in INIT_FILES if (keys_dir / name).exists()]
        if existing:
            raise KeyStoreExists(f"{', '.join(existing)} already in {keys_dir}; not overwriting")
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.chmod(keys_dir, 0o700)
        except OSError:
            pass
        (keys_dir / PEERS_DIR).mkdir(exist_ok=True)
        files = _new_store_files(party, now or datetime.now(UTC), sans)
        _write_all_or_nothing(keys_dir, files)
        if not (keys_dir / PEERS_JSON).exists():
            _write_atomic(keys_dir / PEERS_JSON, registry.dump({}))
        return cls(keys_dir)

    # --- own keys --------------------------------------------------------------
    @property
    def party(self) -> str:
        """This gateway's PartyId."""
        return str(json.loads((self.keys_dir / GATEWAY_JSON).read_text("utf-8"))["party"])

    def signer(self) -> Signer:
        """The gateway's long-term signer."""
        if self._signer is None:
            self._signer = load_signer(self.keys_dir / GATEWAY_KEY)
        return self._signer

    def certificate_pem(self) -> bytes:
        """The gateway's certificate (PEM)."""
        return (self.keys_dir / GATEWAY_CRT).read_bytes()

    def storage_key(self) -> bytes:
        """The 32-byte at-rest encryption key."""
        key = (self.keys_dir / STORAGE_KEY).read_bytes()
        if len(key) != 32:
            raise ValueError("storage key file is corrupt (expected 32 bytes)")
        return key

    def ca_cert_pem(self) -> bytes:
        """The dev CA certificate (PEM)."""
        return (self.keys_dir / CA_CRT).read_bytes()

    def issue_certificate(self, party: str, public_key: PublicKey,
                          sans: Sequence[str] = DEFAULT_SANS) -> bytes:
        """Issue a dev-CA certificate (CN ``party``, serverAuth + clientAuth) for
        ``public_key``, naming ``sans`` (none: no subjectAltName)."""
        key_type(public_key)  # reject unsupported keys
        ca_key = serialization.load_pem_private_key((self.keys_dir / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert_pem())
        cert = _leaf_cert(party, public_key, ca_cert.subject, ca_key, datetime.now(UTC),
                          sans, ca_cert.public_key())
        return _cert_pem(cert)

    # --- the gateway's own next key (gateway.rotation: key rotate / promote) ------
    def next_signer(self) -> Signer | None:
        """The next signing key made by ``key rotate``, or None."""
        path = self.keys_dir / NEXT_KEY
        return load_signer(path) if path.exists() else None

    def own_key_stamp(self) -> tuple[tuple[int, int, int], ...]:
        """Changes whenever the signing key or its certificate is replaced."""
        return (_stamp(self.keys_dir / GATEWAY_KEY), _stamp(self.keys_dir / GATEWAY_CRT))

    def reload_signer(self) -> Signer | None:
        """The signing key as it is on disk now, if its certificate matches it (else
        None: a promote is between its renames; ask again)."""
        signer = load_signer(self.keys_dir / GATEWAY_KEY)
        if signer_id(load_public_key(self.certificate_pem())) != signer.signer:
            return None
        self._signer = signer
        return signer

    def peer_letters(self, party: str) -> str:
        """The key letters of a peer's keys (current, and next if any)."""
        peer = self.peer(party)
        if peer is None:
            raise KeyStoreRefusal(f"{party} is not a registered peer (`gateway peer list` "
                                  "shows those that are)")
        keys = [(peer.key, "current")]
        if peer.next_key is not None:
            keys.append((peer.next_key, "next (verifies beside the current key until "
                                        "`gateway peer promote`)"))
        return "\n".join(key_letter(party=party, role=peer.role, key=key, status=status,
                                    gateway=self.party, printed=registry.today())
                         for key, status in keys)

    # --- peers -----------------------------------------------------------------
    def _registry_store(self, url: str | None) -> RegistryStore:
        if url is None:
            url = home_registry_url(self.keys_dir.parent)
        if url is not None and is_postgresql(url):
            from .store_pg.registrystore import PgRegistry

            return PgRegistry(url, self._file_document)
        return FileRegistry(self.keys_dir / PEERS_JSON, _write_atomic)

    def _file_document(self) -> bytes:
        """``keys/peers.json`` as a registry document of the current format (an empty
        registry if there is none): what a PostgreSQL store without a registry imports."""
        try:
            data = (self.keys_dir / PEERS_JSON).read_bytes()
        except FileNotFoundError:
            return registry.dump({})
        return registry.dump(self._parse(data))

    def _parse(self, data: bytes | None) -> dict[str, Peer]:
        if data is None:
            return {}
        return registry.parse(data, lambda p: (self.keys_dir / PEERS_DIR / f"{p}.pem").read_bytes())

    def _read_peers(self) -> dict[str, Peer]:
        return self._parse(self.registry.read()[1])

    def _peer_table(self) -> dict[str, Peer]:
        if self._peer_cache is None or self.check_every_lookup:
            self.refresh()
        assert self._peer_cache is not None
        return self._peer_cache[1]

    def refresh(self, fresh: bool | None = None) -> bool:
        """Read peers.json again if it was replaced since it was last read (one stat of
        its inode, time and size, ~1-3 µs).  By default every lookup does this, so a
        `peer` command is in force for the very next message; the server instead calls
        it once per reactor turn, before acting on the turn's reads (all of which
        arrived before the stat).  A gateway that finds the file unreadable (a hand
        edit) keeps the peers it last read and logs it once.  True if it read anew.

        With the registry in PostgreSQL (§12) the database is asked for its revision
        only if ``fresh`` (default: :attr:`check_every_lookup`), else the revision last
        polled is compared: the server polls it every 0.5 s on a worker thread
        (RegistryWatch), so a reactor turn never waits on the database for it."""
        where = self.registry.where
        cached = self._peer_cache
        try:
            stamp = self.registry.version(self.check_every_lookup if fresh is None else fresh)
            if cached is not None and cached[0] == stamp:
                return False
            stamp, data = self.registry.read()
            table = self._parse(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if cached is None:
                if isinstance(exc, RegistryRefusal):
                    raise
                raise ValueError(f"{where} is unreadable: {exc}") from None
            if self._bad_stamp != repr(exc):
                self._bad_stamp = repr(exc)
                log.error("%s is unreadable (%s); the peers read before stay in force",
                          where, exc)
            return False
        self._bad_stamp = None
        self._peer_cache = (stamp, table)
        return True

    def peers(self) -> list[Peer]:
        """All registered peers, sorted by PartyId."""
        return list(self._peer_table().values())

    def peer(self, party: str) -> Peer | None:
        """The peer with PartyId ``party`` (disabled ones too), or None."""
        return self._peer_table().get(party)

    def peer_by_signer(self, signer: str) -> Peer | None:
        """The peer whose current key has signer id ``signer``, or None."""
        for p in self.peers():
            if p.signer == signer:
                return p
        return None

    def parties_with_key(self, signer: str) -> list[str]:
        """Every registered party with a key (current or next) of signer id ``signer``."""
        return [p.party for p in self.peers() if signer in p.signers]

    def add_peer(self, party: str, role: str, pem: bytes, connect: str | None = None, *,
                 replace: bool = False, no_connect: bool = False) -> Peer:
        """Register a peer's certificate or public key (``peer add``).

        Changing the key or role of a registered party needs ``replace`` (else
        RegistryRefusal); the same key and role again only updates ``connect``.  A
        registered party keeps its connect address unless ``connect`` is given or
        ``no_connect`` drops it.  Only
        the re-serialised certificate or SubjectPublicKeyInfo is stored, never the file
        as given; a file holding any private key is refused (ValueError)."""
        check_party(party)
        if role not in ROLES:
            raise ValueError("role must be BANK or BROKER")
        self._check_prefix_free(party)
        if connect is not None:
            check_connect(connect)
            connect = address_list_text(connect)
        key = self._new_peer_key(pem)
        return self._change(lambda t: registry.register(t, party, role, key, connect, replace,
                                                        no_connect))

    def add_next_key(self, party: str, pem: bytes, role: str | None = None, *,
                     replace: bool = False) -> Peer:
        """``peer add --next``: a party's next key, verifying beside its current one."""
        key = self._new_peer_key(pem)
        return self._change(lambda t: registry.register_next(t, party, key, role, replace))

    def promote_peer(self, party: str) -> Peer:
        """``peer promote``: the party's next key becomes its only key."""
        return self._change(lambda t: registry.promote(t, party))

    def set_peer_enabled(self, party: str, enabled: bool) -> Peer:
        """``peer disable`` / ``peer enable``."""
        return self._change(lambda t: registry.set_enabled(t, party, enabled))

    def remove_peer(self, party: str) -> Peer:
        """``peer remove``: forget the party; its keys go to ``peers/retired/``."""
        return self._change(lambda t: registry.remove(t, party))

    def _new_peer_key(self, pem: bytes) -> PeerKey:
        key = PeerKey.from_pem(public_pem(pem), registry.today())
        own = [self.signer().signer]
        nxt = self.next_signer()
        if nxt is not None:
            own.append(nxt.signer)
        if key.signer in own:
            raise RegistryRefusal(
                f"that is this gateway's own key (signer {key.signer}): register the peer's "
                "certificate (the one the bank or broker sent you), not the gateway's")
        return key

    def _change(self, apply: Callable[[dict[str, Peer]], Peer]) -> Peer:
        """Read the registry, apply one change, write it whole (temp + rename), all
        under the store's lock so two commands never lose each other's change.  In
        PostgreSQL the write is a compare-and-set on the revision read: a change by
        another home meanwhile refuses it (RegistryRefusal: run the command again)."""
        with self.locked():
            version, data = self.registry.read()
            table = self._parse(data)
            before = dict(table)
            result = apply(table)
            self.registry.write(version, registry.dump(table))
            self._peer_cache = None
            self._write_copies(before, table)
        return result

    def _write_copies(self, before: dict[str, Peer], after: dict[str, Peer]) -> None:
        """``peers/ID.pem`` (and ``ID.next.pem``): copies of the keys for people and
        tools (``openssl dgst -verify``); never read by the gateway.  A key that left
        the registry is kept in ``peers/retired/ID-SIGNER.pem`` to check old evidence."""
        peers_dir = self.keys_dir / PEERS_DIR
        peers_dir.mkdir(exist_ok=True)
        for party in sorted(set(before) | set(after)):
            old, new = before.get(party), after.get(party)
            if old == new:
                continue
            for key in _keys_of(old):
                if new is None or key.signer not in new.signers:
                    self._retire(party, key)
            if new is None:
                for name in (f"{party}.pem", f"{party}.next.pem"):
                    (peers_dir / name).unlink(missing_ok=True)
                continue
            _write_atomic(peers_dir / f"{party}.pem", new.pem)
            if new.next_key is not None:
                _write_atomic(peers_dir / f"{party}.next.pem", new.next_key.pem)
            else:
                (peers_dir / f"{party}.next.pem").unlink(missing_ok=True)

    def _retire(self, party: str, key: PeerKey) -> None:
        retired = self.keys_dir / PEERS_DIR / RETIRED_DIR
        retired.mkdir(exist_ok=True)
        path = retired / f"{party}-{key.signer}.pem"
        if not path.exists():
            _write_atomic(path, key.pem)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The store's write lock (``keys/.lock``): one key or peer command at a time."""
        fd = os.open(self.keys_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _check_prefix_free(self, party: str) -> None:
        """§1: no PartyId registered at this gateway, its own included, is a prefix of
        another, since every BizSn begins with its originator's PartyId (§4): with GTJA
        and GTJAX both registered, GTJAX1 could be either's serial.  Re-registering the
        same peer is not a clash (ValueError, one line saying what to do)."""
        own = self.party
        if party == own:
            raise ValueError(f"{party} is this gateway's own PartyId; register the peer "
                             "under its own PartyId")
        for other in [own, *self._read_peers()]:
            if other == party or not (other.startswith(party) or party.startswith(other)):
                continue
            whose = "this gateway's own PartyId" if other == own else "the registered peer"
            raise ValueError(f"{party} clashes with {whose} {other}: one is a prefix of the "
                             "other, and PartyIds at one gateway must be prefix-free (§1: "
                             "every BizSn begins with its sender's); choose an id that neither "
                             f"begins with {other} nor is the start of it")


def _keys_of(peer: Peer | None) -> list[PeerKey]:
    if peer is None:
        return []
    return [peer.key] + ([peer.next_key] if peer.next_key is not None else [])


def _stamp(path: str | Path) -> tuple[int, int, int]:
    """A file's identity and version: a rename puts a new inode in place."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_private_key(kind: str) -> tuple[Any, str]:
    """A new private key of ``kind`` (ES256, ED25519, PS256/RSA-2048, RS256) and its
    signature algorithm."""
    kind = kind.upper()
    if kind == "ES256":
        return ec.generate_private_key(ec.SECP256R1()), "ES256"
    if kind == "ED25519":
        return ed25519.Ed25519PrivateKey.generate(), "ED25519"
    if kind in ("PS256", "RSA", "RSA-2048", "RS256"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key, "RS256" if kind == "RS256" else "PS256"
    raise ValueError(f"unknown key kind {kind!r}")
