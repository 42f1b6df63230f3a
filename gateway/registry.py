"""PROTOCOL §9 peer registry: which parties may log on, in which role, with which keys.

The registry is one file, ``keys/peers.json``, holding every peer's role, dial-out
address, state and the PEM of each of its keys.  It is only ever written whole, to a
temporary file that is then renamed over it, so a reader (the running gateway checks
it before every message of a logged-on session) sees the registry as it was before a
``peer`` command or as it is after it, never half of one.

A party has a current key and at most one *next* key (``peer add --next``); both
verify until ``peer promote`` makes the next key the only one.  A session is bound to
the key it logged on with; :func:`why_untrusted` says when that key stopped being
valid (replaced, un-promoted, disabled, removed), and the session is then closed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization

from .bookdate import CHINA
from .signature import PublicKey, key_type, load_public_key, signer_id

#: The format written by this code; a file without ``version`` is the first format
#: (role/connect per party, the key in ``peers/ID.pem``), still read.
REGISTRY_VERSION = 2
ROLES = ("BANK", "BROKER")


class RegistryRefusal(ValueError):
    """A ``peer`` command would do something it must not; the text says what to do."""


@dataclass(frozen=True)
class PeerKey:
    """One registered public key of a party."""

    signer: str
    key_type: str
    added: str  # the date it was registered, YYYY-MM-DD (Asia/Shanghai)
    pem: bytes = field(repr=False)
    public_key: PublicKey = field(compare=False, repr=False)

    @classmethod
    def from_pem(cls, pem: bytes, added: str) -> PeerKey:
        pk = load_public_key(pem)
        return cls(signer_id(pk), key_type(pk), added, pem, pk)

    def to_json(self) -> dict[str, str]:
        return {"signer": self.signer, "key_type": self.key_type, "added": self.added,
                "pem": self.pem.decode("ascii")}


@dataclass(frozen=True)
class Peer:
    """A registered counterparty, seen through one of its keys (the current one, or
    for a session that logged on with it, the next one: :meth:`signing_with`)."""

    party: str
    role: str
    key_type: str
    signer: str
    connect: str | None
    public_key: PublicKey = field(compare=False, repr=False)
    pem: bytes = field(repr=False)
    enabled: bool = True
    next_key: PeerKey | None = None
    added: str = ""  # the date this key was registered

    @classmethod
    def with_key(cls, party: str, role: str, key: PeerKey, connect: str | None = None,
                 enabled: bool = True, next_key: PeerKey | None = None) -> Peer:
        return cls(party, role, key.key_type, key.signer, connect, key.public_key, key.pem,
                   enabled, next_key, key.added)

    @property
    def key(self) -> PeerKey:
        """The key this view stands for."""
        return PeerKey(self.signer, self.key_type, self.added, self.pem, self.public_key)

    @property
    def signers(self) -> tuple[str, ...]:
        """Signer ids of every key of the party that verifies now."""
        if self.next_key is None:
            return (self.signer,)
        return (self.signer, self.next_key.signer)

    def signing_with(self, sig: str | None) -> Peer:
        """This peer seen through the key that made envelope signature ``sig``: its
        next key if that one signed, else itself (the current key, checked as before)."""
        nk = self.next_key
        if nk is None or sig is None or sig.count(":") != 2 or sig.split(":")[1] != nk.signer:
            return self
        return replace(self, key_type=nk.key_type, signer=nk.signer,
                       public_key=nk.public_key, pem=nk.pem, added=nk.added)


def why_untrusted(registered: Peer | None, logged_on: Peer) -> str | None:
    """Why a session that logged on as ``logged_on`` may no longer be used, given the
    party's entry in the registry now (None: it still may)."""
    party = logged_on.party
    if registered is logged_on:  # the registry has not changed since the logon
        return None
    if registered is None:
        return f"{party} was removed from the gateway's peers"
    if not registered.enabled:
        return f"{party} is disabled at the gateway"
    if registered.role != logged_on.role:
        return f"{party} is now registered as {registered.role}, not {logged_on.role}"
    if logged_on.signer not in registered.signers:
        return f"key {logged_on.signer} is no longer registered for {party}"
    return None


class _Closable(Protocol):
    peer: Peer | None
    session_id: str

    def close(self) -> None: ...


def close_untrusted(sessions: Iterable[_Closable], find_peer: Callable[[str], Peer | None],
                    tell: Callable[[_Closable, str], None] | None = None) -> int:
    """Close every session whose key is no longer valid; ``tell`` may first send the
    reason to the peer.  Returns how many were closed."""
    closed = 0
    for session in list(sessions):
        peer = session.peer
        if peer is None:
            continue
        reason = why_untrusted(find_peer(peer.party), peer)
        if reason is None:
            continue
        if tell is not None:
            tell(session, reason)
        session.close()
        closed += 1
    return closed


# --- the file -------------------------------------------------------------------
def today() -> str:
    """The registration date stamped on a key (Asia/Shanghai)."""
    return dt.datetime.now(CHINA).date().isoformat()


def parse(data: bytes, legacy_pem: Callable[[str], bytes]) -> dict[str, Peer]:
    """The peers of a registry file (ValueError if it is not one).  ``legacy_pem``
    reads ``peers/ID.pem`` for a file of the first format."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("peers.json is not a JSON object")
    if "version" not in doc:
        return {party: _legacy_peer(party, entry, legacy_pem(party))
                for party, entry in sorted(doc.items())}
    if doc["version"] != REGISTRY_VERSION:
        raise ValueError(f"peers.json is version {doc['version']}; this gateway reads "
                         f"version {REGISTRY_VERSION}")
    return {party: _peer(party, entry) for party, entry in sorted(doc["peers"].items())}


def _legacy_peer(party: str, entry: Mapping[str, Any], pem: bytes) -> Peer:
    return Peer.with_key(party, entry["role"], PeerKey.from_pem(pem, ""), entry.get("connect"))


def _key(entry: Mapping[str, Any]) -> PeerKey:
    key = PeerKey.from_pem(str(entry["pem"]).encode("ascii"), str(entry.get("added", "")))
    if key.signer != entry.get("signer", key.signer):
        raise ValueError(f"peers.json: signer {entry.get('signer')} does not match its key")
    return key


def _peer(party: str, entry: Mapping[str, Any]) -> Peer:
    nxt = entry.get("next")
    return Peer.with_key(party, str(entry["role"]), _key(entry["key"]), entry.get("connect"),
                         bool(entry.get("enabled", True)), _key(nxt) if nxt else None)


def dump(peers: Mapping[str, Peer]) -> bytes:
    """The registry file for ``peers``."""
    doc = {"version": REGISTRY_VERSION, "peers": {
        p.party: {"role": p.role, "connect": p.connect, "enabled": p.enabled,
                  "key": p.key.to_json(),
                  "next": p.next_key.to_json() if p.next_key else None}
        for p in sorted(peers.values(), key=lambda p: p.party)}}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


# --- changes (each on a copy of the table, by the key store under its lock) -----
def register(peers: dict[str, Peer], party: str, role: str, key: PeerKey,
             connect: str | None, replace_existing: bool, no_connect: bool = False) -> Peer:
    """``peer add``: a new party, or (``--replace``) a new key or role for one.  A
    registered party keeps its connect address unless ``connect`` gives another or
    ``no_connect`` drops it."""
    if role not in ROLES:
        raise RegistryRefusal("role must be BANK or BROKER")
    old = peers.get(party)
    if old is not None and (old.signer, old.role) != (key.signer, role) and not replace_existing:
        if old.signer != key.signer:
            what = "key and role" if old.role != role else "key"
            how = ("add --replace to do so (the sessions of its old key are closed), or use "
                   "--next to register a next key beside the current one")
        else:
            what, how = "role", "add --replace to do so (its open sessions are closed)"
        raise RegistryRefusal(f"{party} is already registered ({old.role}, signer "
                              f"{old.signer}); this would change its {what}: {how}")
    if old is not None and old.signer == key.signer:
        key = old.key  # the same key keeps its registration date
    nxt = old.next_key if old is not None else None
    if nxt is not None and nxt.signer == key.signer:
        nxt = None
    if connect is None and old is not None and not no_connect:
        connect = old.connect
    peer = Peer.with_key(party, role, key, connect, old.enabled if old else True, nxt)
    peers[party] = peer
    return peer


def register_next(peers: dict[str, Peer], party: str, key: PeerKey, role: str | None,
                  replace_existing: bool) -> Peer:
    """``peer add --next``: a key beside the current one, both verifying."""
    old = _existing(peers, party)
    if role is not None and role != old.role:
        raise RegistryRefusal(f"{party} is registered as {old.role}; a next key keeps the "
                              "role (change it with peer add --replace)")
    if key.signer == old.signer:
        raise RegistryRefusal(f"that is {party}'s current key ({key.signer}); --next takes "
                              "the key that is to replace it")
    if old.next_key is not None and old.next_key.signer != key.signer and not replace_existing:
        raise RegistryRefusal(
            f"{party} already has a next key ({old.next_key.signer}): promote it with "
            f"`gateway peer promote --id {party}`, or add --replace to register this one "
            "in its place")
    if old.next_key is not None and old.next_key.signer == key.signer:
        key = old.next_key
    peer = replace(old, next_key=key)
    peers[party] = peer
    return peer


def promote(peers: dict[str, Peer], party: str) -> Peer:
    """``peer promote``: the next key becomes the only one."""
    old = _existing(peers, party)
    if old.next_key is None:
        raise RegistryRefusal(f"{party} has no next key: register one first with "
                              f"`gateway peer add --id {party} --cert FILE --next`")
    peer = Peer.with_key(party, old.role, old.next_key, old.connect, old.enabled)
    peers[party] = peer
    return peer


def set_enabled(peers: dict[str, Peer], party: str, enabled: bool) -> Peer:
    """``peer disable|enable``."""
    peer = replace(_existing(peers, party), enabled=enabled)
    peers[party] = peer
    return peer


def remove(peers: dict[str, Peer], party: str) -> Peer:
    """``peer remove``: forget the party (its journal rows stay)."""
    return peers.pop(_existing(peers, party).party)


def _existing(peers: Mapping[str, Peer], party: str) -> Peer:
    peer = peers.get(party)
    if peer is None:
        raise RegistryRefusal(f"{party} is not a registered peer (`gateway peer list` shows "
                              "those that are; register it with `gateway peer add`)")
    return peer


# --- key letters (confirmed out of band, as EBICS INI letters are) --------------
def fingerprint(public_key: PublicKey) -> str:
    """The full SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex (the §3 signer
    id is its first 16 characters)."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_letter(*, party: str, role: str, key: PeerKey, status: str, gateway: str,
               printed: str) -> str:
    """A key letter: what the two sides read to each other (or sign and exchange on
    paper) before trusting a key that came over the wire."""
    fp = fingerprint(key.public_key)
    groups = [fp[i:i + 4] for i in range(0, 64, 4)]
    return "\n".join([
        "SBDX/1 key letter",
        f"Gateway:       {gateway}",
        f"Party:         {party}",
        f"Role:          {role}",
        f"Key type:      {key.key_type}",
        f"Key status:    {status}",
        f"Registered:    {key.added or 'unknown (registered before key dates were kept)'}",
        f"Letter date:   {printed}",
        f"Signer (§3):   {key.signer}",
        "SHA-256 of the DER SubjectPublicKeyInfo:",
        "  " + " ".join(groups[:8]),
        "  " + " ".join(groups[8:]),
        f"  ({fp})",
        "Compare every group with the holder of the private key over a second channel",
        "(telephone, signed paper) before relying on the key.",
        "",
        "Confirmed by: ____________________  Date: ____________  Signature: ____________",
        "",
    ])
