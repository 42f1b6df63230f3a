"""A bank/broker peer written from PROTOCOL.md for the integration tests.

Deliberately independent of the gateway's own session code: framing, XML,
MAC, signatures and the key exchange are done here with the standard library,
lxml and `cryptography` primitives, straight from the protocol text.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from lxml import etree

NS = "{urn:sbdx:1}"
CN = dt.timezone(dt.timedelta(hours=8))


def now_iso(offset_seconds: float = 0) -> str:
    t = dt.datetime.now(CN) + dt.timedelta(seconds=offset_seconds)
    return t.isoformat(timespec="milliseconds")


def signer_of(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def body_element(msg_type: str) -> str:
    return "".join(p.capitalize() for p in msg_type.split("."))


@dataclass
class Frame:
    key_id: str
    mac: str
    sig: str
    xml: bytes
    root: Any

    @property
    def type(self) -> str:
        return self.root.findtext(f"{NS}Head/{NS}Type")

    def head(self, name: str) -> str | None:
        return self.root.findtext(f"{NS}Head/{NS}{name}")

    @property
    def body(self) -> dict[str, str]:
        el = self.root.find(f"{NS}Body")[0]
        return {c.tag[len(NS):]: (c.text or "") for c in el}

    def records(self, name: str) -> list[dict[str, str]]:
        el = self.root.find(f"{NS}Body")[0]
        return [{c.tag[len(NS):]: c.text or "" for c in rec} for rec in el.findall(NS + name)]


class TestPeer:
    """A blocking SBDX/1 client."""

    __test__ = False  # not a pytest class

    def __init__(self, party: str, role: str, key: ec.EllipticCurvePrivateKey, port: int,
                 gateway: str = "GW01", gateway_public_key: Any = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.party, self.role, self.key, self.port, self.gateway = party, role, key, port, gateway
        self.gateway_public_key = gateway_public_key
        self.signer = signer_of(key.public_key())
        self.tls = tls
        self.sock: socket.socket | None = None
        self.buf = b""
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        self.key_id: str | None = None
        self._seq = itertools.count(1)
        self._salt = os.urandom(3).hex()
        self.inbox: list[Frame] = []

    # --- transport ----------------------------------------------------------
    def connect(self) -> TestPeer:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        return self

    def close(self) -> None:
        if self.sock:
            self.sock.close()
            self.sock = None

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def recv_frame(self, timeout: float = 10) -> Frame:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 8:
                n = int(self.buf[:8])
                if len(self.buf) >= 8 + n:
                    payload, self.buf = self.buf[8:8 + n], self.buf[8 + n:]
                    line, xml = payload.split(b"\n", 1)
                    _, key_id, mac, sig = line.decode().split(" ")
                    parser = etree.XMLParser(resolve_entities=False, no_network=True)
                    return Frame(key_id, mac, sig, xml, etree.fromstring(xml, parser))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("gateway closed the connection")
            self.buf += chunk

    def recv(self, *types: str, timeout: float = 10, ref: str | None = None) -> Frame:
        """Next frame of one of ``types`` (heartbeats skipped, KEYX answered)."""
        for i, f in enumerate(self.inbox):
            if (not types or f.type in types) and (ref is None or f.head("RefId") == ref):
                return self.inbox.pop(i)
        while True:
            f = self.recv_frame(timeout)
            if f.type == "SYS.HEARTBEAT" and "SYS.HEARTBEAT" not in types:
                continue
            if f.type == "SYS.KEYX.REQ" and "SYS.KEYX.REQ" not in types:
                self.answer_keyx(f)
                continue
            if (not types or f.type in types) and (ref is None or f.head("RefId") == ref):
                return f
            self.inbox.append(f)

    def closed_by_gateway(self, timeout: float = 10) -> bool:
        try:
            while True:
                self.recv_frame(timeout)
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    # --- messages -----------------------------------------------------------
    def next_msg_id(self) -> str:
        return f"{self.party}{self._salt}{next(self._seq):08d}"

    def build(self, msg_type: str, fields: list[tuple[str, Any]], *, msg_id: str | None = None,
              to: str | None = None, ref: str | None = None, time: str | None = None,
              encrypt: tuple[str, ...] = (), trade_date: str | None = None) -> tuple[str, bytes]:
        msg_id = msg_id or self.next_msg_id()
        parts = []
        for name, value in fields:
            if value is None:
                continue
            if name in encrypt:
                parts.append(f'<{name} enc="A256GCM">{self.encrypt(msg_id, name, value)}</{name}>')
            else:
                parts.append(f"<{name}>{escape(str(value))}</{name}>")
        head = (f"<Ver>1.0</Ver><Type>{msg_type}</Type><MsgId>{msg_id}</MsgId>"
                + (f"<RefId>{ref}</RefId>" if ref else "")
                + f"<From>{self.party}</From><To>{to or self.gateway}</To>"
                f"<Time>{time or now_iso()}</Time>"
                f"<TradeDate>{trade_date or dt.datetime.now(CN).date()}</TradeDate>")
        el = body_element(msg_type)
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Msg xmlns="urn:sbdx:1"><Head>{head}'
               f"</Head><Body><{el}>{''.join(parts)}</{el}></Body></Msg>\n").encode()
        return msg_id, xml

    def sign(self, xml: bytes) -> str:
        der = self.key.sign(xml, ec.ECDSA(hashes.SHA256()))
        return f"ES256:{self.signer}:{base64.b64encode(der).decode()}"

    def mac(self, xml: bytes, key_id: str | None = None) -> tuple[str, str]:
        kid = key_id or self.key_id
        if kid is None:
            return "-", "-"
        tag = hmac.new(self.keys[kid][0], xml, hashlib.sha256).digest()
        return kid, "HS256:" + base64.b64encode(tag).decode()

    def frame(self, xml: bytes, *, sign: bool = True, mac: bool = True,
              key_id: str | None = None) -> bytes:
        kid, mac_field = self.mac(xml, key_id) if mac else ("-", "-")
        payload = f"SBDX1 {kid} {mac_field} {self.sign(xml) if sign else '-'}".encode() + b"\n" + xml
        return b"%08d" % len(payload) + payload

    def send(self, msg_type: str, fields: list[tuple[str, Any]], *, sign: bool = True,
             mac: bool = True, key_id: str | None = None, **kw: Any) -> str:
        msg_id, xml = self.build(msg_type, fields, **kw)
        self.send_raw(self.frame(xml, sign=sign, mac=mac, key_id=key_id))
        return msg_id

    def request(self, msg_type: str, fields: list[tuple[str, Any]], **kw: Any) -> Frame:
        msg_id = self.send(msg_type, fields, **kw)
        return self._answer_to(msg_id, msg_type)

    def _answer_to(self, msg_id: str, msg_type: str, timeout: float = 10) -> Frame:
        """The response (or SYS.ERROR) answering ``msg_id``; other frames are kept."""
        def answers(f: Frame) -> bool:
            return f.head("RefId") == msg_id or (f.type == "SYS.ERROR"
                                                 and f.body.get("RefMsgId") == msg_id)

        for i, f in enumerate(self.inbox):
            if answers(f):
                return self.inbox.pop(i)
        while True:
            f = self.recv_frame(timeout)
            if f.type == "SYS.HEARTBEAT":
                continue
            if f.type == "SYS.KEYX.REQ":
                self.answer_keyx(f)
                continue
            if answers(f):
                return f
            self.inbox.append(f)

    # --- session ------------------------------------------------------------
    def logon(self, heartbeat: int = 30) -> Frame:
        return self.request("SYS.LOGON.REQ", [("PartyId", self.party), ("Role", self.role),
                                              ("Nonce", os.urandom(16).hex()),
                                              ("HeartbeatSec", heartbeat)], mac=False)

    def derive(self, shared: bytes, n_init: str, n_resp: str, key_id: str) -> tuple[bytes, bytes]:
        okm = HKDF(hashes.SHA256(), 64, bytes.fromhex(n_init) + bytes.fromhex(n_resp),
                   b"SBDX1 " + key_id.encode()).derive(shared)
        return okm[:32], okm[32:]

    def keyx(self, key_id: str | None = None) -> Frame:
        key_id = key_id or f"P{next(self._seq):05d}"
        eph = x25519.X25519PrivateKey.generate()
        pub = base64.b64encode(eph.public_key().public_bytes_raw()).decode()
        nonce = os.urandom(16).hex()
        rsp = self.request("SYS.KEYX.REQ", [("KeyId", key_id), ("Curve", "X25519"),
                                            ("PublicKey", pub), ("Nonce", nonce)], mac=False)
        b = rsp.body
        assert b["Result"] == "0000", b
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(
            base64.b64decode(b["PublicKey"])))
        mac_key, data_key = self.derive(shared, nonce, b["Nonce"], key_id)
        kcv = hmac.new(mac_key, b"SBDX KCV", hashlib.sha256).hexdigest()[:8]
        assert kcv == b["Kcv"], "KCV mismatch"
        self.keys[key_id] = (mac_key, data_key)
        self.key_id = key_id
        return rsp

    def answer_keyx(self, req: Frame) -> None:
        b = req.body
        eph = x25519.X25519PrivateKey.generate()
        nonce = os.urandom(16).hex()
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(
            base64.b64decode(b["PublicKey"])))
        mac_key, data_key = self.derive(shared, b["Nonce"], nonce, b["KeyId"])
        self.keys[b["KeyId"]] = (mac_key, data_key)
        self.key_id = b["KeyId"]
        kcv = hmac.new(mac_key, b"SBDX KCV", hashlib.sha256).hexdigest()[:8]
        self.send("SYS.KEYX.RSP", [("Result", "0000"), ("ResultText", "ok"), ("KeyId", b["KeyId"]),
                                   ("PublicKey", base64.b64encode(
                                       eph.public_key().public_bytes_raw()).decode()),
                                   ("Nonce", nonce), ("Kcv", kcv)],
                  mac=False, ref=req.head("MsgId"))

    def encrypt(self, msg_id: str, element: str, plaintext: str) -> str:
        assert self.key_id is not None
        nonce = os.urandom(12)
        ct = AESGCM(self.keys[self.key_id][1]).encrypt(
            nonce, plaintext.encode(), f"{msg_id}/{element}".encode())
        return base64.b64encode(nonce + ct).decode()

    def decrypt(self, msg_id: str, element: str, value: str, key_id: str) -> str:
        raw = base64.b64decode(value)
        return AESGCM(self.keys[key_id][1]).decrypt(
            raw[:12], raw[12:], f"{msg_id}/{element}".encode()).decode()

    def verify_from_gateway(self, f: Frame) -> None:
        """Check the gateway's MAC and signature on a received frame."""
        if f.mac != "-":
            want = hmac.new(self.keys[f.key_id][0], f.xml, hashlib.sha256).digest()
            assert hmac.compare_digest(base64.b64decode(f.mac[6:]), want), "bad MAC"
        if self.gateway_public_key is not None:
            alg, signer, sig = f.sig.split(":")
            assert signer == signer_of(self.gateway_public_key)
            self.gateway_public_key.verify(base64.b64decode(sig), f.xml,
                                           ec.ECDSA(hashes.SHA256()))

    def open_session(self) -> TestPeer:
        self.connect()
        rsp = self.logon()
        assert rsp.body["Result"] == "0000", rsp.body
        self.keyx()
        return self
