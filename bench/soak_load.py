"""The soak's traffic (bench/soak.py): one broker session driving a steady mixed load,
and a thread opening hostile connections beside it.

The broker is the integration tests' ``TestPeer`` (tests/peer.py, written from the
protocol text, independent of the gateway's own session code).  It answers the
gateway's key rotations (SYS.KEYX.REQ) as they come and checks the MAC and signature
of every frame the gateway sends it.
"""
from __future__ import annotations

import collections
import os
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from flows import FUND, pay, xfer
from peer import Frame, TestPeer

GATEWAY = "GW01"
BANK = "CCB"
#: Per-request weights of the mix (withheld transfers are paced separately).
MIX = (("XFER.IN", 30), ("XFER.OUT", 25), ("PAY.ORDER", 10), ("CTS.QUERY", 7),
       ("XFER.QUERY", 10), ("repeat", 10), ("repeat_changed", 1), ("bad_mac", 3),
       ("bad_sig", 2), ("replay", 2))
#: Answers that the gateway gives before journaling a record.
NOT_JOURNALED = ("S901", "S902")


@dataclass
class Sent:
    kind: str  # the mix entry (XFER.IN, repeat, bad_mac, ...)
    msg_type: str  # XFER.IN.REQ ...
    biz_sn: str
    at: float
    expect: str | None = None  # the code a repeat / hostile request must get


@dataclass
class Business:
    """One money-moving request the broker sent (the unit of the final-state check)."""

    msg_type: str
    fields: list[tuple[str, Any]]
    result: str | None = None


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    answered: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    window_ms: list[float] = field(default_factory=list)
    verify_failures: int = 0
    keyx_answered: int = 0
    heartbeats: int = 0
    errors: list[str] = field(default_factory=list)


def fen_text(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


class Broker:
    """Paced mixed load over one broker session; single-threaded (call :meth:`run`)."""

    def __init__(self, peer: TestPeer, rate: float, withheld: list[str], withhold_every: float,
                 service_end: str, seed: int = 20261125) -> None:
        self.peer = peer
        self.rate = rate
        self.rng = random.Random(seed)
        self.withheld = collections.deque(withheld)
        self.withhold_every = withhold_every
        self.next_withhold: float | None = None
        self.service_end = service_end
        self.inflight: dict[str, Sent] = {}
        self.business: dict[tuple[str, str], Business] = {}
        self.answered_ids: collections.deque[tuple[float, str]] = collections.deque(maxlen=2000)
        self.done: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        self.tally = Tally()
        self.aggregate_fen = 0  # what our successful XFER.IN/OUT left in the bank's aggregate
        self.out_reserved_fen = 0
        self.seq = 0
        self.hostile_sns: set[str] = set()
        self._kinds = [k for k, _ in MIX]
        self._weights = [w for _, w in MIX]

    # --- the loop -------------------------------------------------------------------
    def run(self, seconds: float) -> None:
        started = time.monotonic()
        sent = 0
        if self.next_withhold is None:  # paced across run() slices
            self.next_withhold = started + self.withhold_every
        while (now := time.monotonic()) < started + seconds:
            due = int((now - started) * self.rate)
            for _ in range(min(due - sent, 50)):
                self.send_one()
                sent += 1
            if now >= self.next_withhold and self.withheld:
                self.send_business("XFER.IN.REQ", self.withheld.popleft(), "withheld", 100)
                self.next_withhold += self.withhold_every
            self.pump(0.005)

    def drain(self, seconds: float) -> None:
        """Read answers until nothing is in flight (or time is up)."""
        deadline = time.monotonic() + seconds
        while self.inflight and time.monotonic() < deadline:
            self.pump(0.2)

    def pump(self, timeout: float) -> None:
        """Handle every frame that arrives within ``timeout`` of the last one."""
        while True:
            try:
                frame = self.peer.recv_frame(timeout)
            except TimeoutError:
                return
            self.on_frame(frame)
            timeout = 0.0005

    # --- sending ----------------------------------------------------------------------
    def send_one(self) -> None:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        getattr(self, "_send_" + kind.replace(".", "_").lower())()

    def next_sn(self, prefix: str) -> str:
        self.seq += 1
        return f"{self.peer.party}{prefix}{self.seq:08d}"  # §4: the sender's PartyId first

    def send_business(self, msg_type: str, biz_sn: str, kind: str, fen: int) -> None:
        if msg_type == "PAY.ORDER.REQ":
            fields = pay(biz_sn, self.service_end, amount=fen_text(fen))
        else:
            fields = xfer(biz_sn, amount=fen_text(fen))
        self.business[(msg_type, biz_sn)] = Business(msg_type, fields)
        if msg_type == "XFER.OUT.REQ":
            self.out_reserved_fen += fen
        self._send(kind, msg_type, biz_sn, fields, to=BANK)

    def _send(self, kind: str, msg_type: str, biz_sn: str, fields: list[tuple[str, Any]],
              to: str, expect: str | None = None) -> str:
        msg_id = self.peer.send(msg_type, fields, to=to)
        self.inflight[msg_id] = Sent(kind, msg_type, biz_sn, time.monotonic(), expect)
        self.tally.sent[kind] += 1
        return msg_id

    def _send_xfer_in(self) -> None:
        self.send_business("XFER.IN.REQ", self.next_sn("I"), "XFER.IN", self.rng.randint(1, 500))

    def _send_xfer_out(self) -> None:
        fen = self.rng.randint(1, 500)
        if self.aggregate_fen - self.out_reserved_fen < fen:
            self._send_xfer_in()  # nothing of ours to take back out yet
            return
        self.send_business("XFER.OUT.REQ", self.next_sn("O"), "XFER.OUT", fen)

    def _send_pay_order(self) -> None:
        self.send_business("PAY.ORDER.REQ", self.next_sn("P"), "PAY.ORDER",
                           self.rng.randint(1, 100))

    def _send_cts_query(self) -> None:
        self._send("CTS.QUERY", "CTS.QUERY.REQ", "", [("FundAcct", FUND)], to=GATEWAY)

    def _send_xfer_query(self) -> None:
        done = self._answered_business(("XFER.IN.REQ", "XFER.OUT.REQ"))
        if done is None:
            return self._send_cts_query()
        msg_type, sn = done
        self._send("XFER.QUERY", "XFER.QUERY.REQ", sn,
                   [("BizSn", sn), ("OrigType", msg_type[:-4])], to=GATEWAY)

    def _send_repeat(self) -> None:
        """The same request again (new MsgId): the first answer again, never relayed."""
        done = self._answered_business(("XFER.IN.REQ", "XFER.OUT.REQ", "PAY.ORDER.REQ"))
        if done is None:
            return self._send_xfer_in()
        biz = self.business[done]
        self._send("repeat", biz.msg_type, done[1], biz.fields, to=BANK, expect=biz.result)

    def _send_repeat_changed(self) -> None:
        """The same BizSn with another amount: B312."""
        done = self._answered_business(("XFER.IN.REQ", "XFER.OUT.REQ"))
        if done is None:
            return self._send_xfer_in()
        biz = self.business[done]
        fields = [(k, "999.99" if k == "Amount" else v) for k, v in biz.fields]
        self._send("repeat_changed", biz.msg_type, done[1], fields, to=BANK, expect="B312")

    def _send_bad_mac(self) -> None:
        self._send_tampered("bad_mac", b"HS256:", "E200")

    def _send_bad_sig(self) -> None:
        self._send_tampered("bad_sig", b"ES256:", "E202")

    def _send_tampered(self, kind: str, marker: bytes, expect: str) -> None:
        """A transfer whose MAC (or signature) has one character changed."""
        sn = self.next_sn("Z")
        self.hostile_sns.add(sn)
        msg_id, xml = self.peer.build("XFER.IN.REQ", xfer(sn, amount="1.00"), to=BANK)
        frame = self.peer.frame(xml)
        at = frame.index(marker) + len(marker) + (27 if marker == b"ES256:" else 5)
        bad = b"A" if frame[at:at + 1] != b"A" else b"B"
        self.peer.send_raw(frame[:at] + bad + frame[at + 1:])
        self.inflight[msg_id] = Sent(kind, "XFER.IN.REQ", sn, time.monotonic(), expect)
        self.tally.sent[kind] += 1

    def _send_replay(self) -> None:
        """A new request under the MsgId of one answered at least 10 s ago: E204."""
        if not self.answered_ids or time.monotonic() - self.answered_ids[0][0] < 10:
            return self._send_cts_query()
        _, old = self.answered_ids.popleft()
        sn = self.next_sn("Z")
        self.hostile_sns.add(sn)
        _, xml = self.peer.build("XFER.IN.REQ", xfer(sn, amount="1.00"), to=BANK, msg_id=old)
        self.peer.send_raw(self.peer.frame(xml))
        self.inflight[old] = Sent("replay", "XFER.IN.REQ", sn, time.monotonic(), "E204")
        self.tally.sent["replay"] += 1

    def _answered_business(self, types: tuple[str, ...]) -> tuple[str, str] | None:
        """A recently answered business request of one of ``types``, if one comes up."""
        for _ in range(5):
            if not self.done:
                return None
            key = self.rng.choice(self.done)
            if key[0] in types:
                return key
        return None

    # --- receiving --------------------------------------------------------------------
    def on_frame(self, frame: Frame) -> None:
        if frame.type == "SYS.KEYX.REQ":
            self.peer.answer_keyx(frame)
            self.tally.keyx_answered += 1
            return
        self._verify(frame)
        if frame.type == "SYS.HEARTBEAT":
            self.tally.heartbeats += 1
            return
        ref = frame.body.get("RefMsgId") if frame.type == "SYS.ERROR" else frame.head("RefId")
        sent = self.inflight.pop(ref or "", None)
        if sent is None:
            self.tally.errors.append(f"unmatched {frame.type} ref {ref}: {frame.body}"[:300])
            return
        code = frame.body.get("Code") if frame.type == "SYS.ERROR" else frame.body.get("Result")
        self._on_answer(sent, ref or "", code or "?")

    def _on_answer(self, sent: Sent, msg_id: str, code: str) -> None:
        ms = (time.monotonic() - sent.at) * 1000
        self.tally.latencies_ms.append(ms)
        self.tally.window_ms.append(ms)
        self.tally.answered[(sent.kind, code)] += 1
        if sent.expect is not None and code != sent.expect:
            self.tally.unexpected[(sent.kind, sent.expect, code)] += 1
        if sent.kind not in ("bad_mac", "bad_sig", "replay"):
            self.answered_ids.append((time.monotonic(), msg_id))
        biz = self.business.get((sent.msg_type, sent.biz_sn))
        if biz is None or sent.kind in ("repeat", "repeat_changed") or biz.result is not None:
            return
        biz.result = code
        self.done.append((sent.msg_type, sent.biz_sn))
        fen = int(dict(biz.fields)["Amount"].replace(".", ""))
        if sent.msg_type == "XFER.OUT.REQ":
            self.out_reserved_fen -= fen
            self.aggregate_fen -= fen if code == "0000" else 0
        elif sent.msg_type == "XFER.IN.REQ" and code == "0000":
            self.aggregate_fen += fen

    def _verify(self, frame: Frame) -> None:
        try:
            self.peer.verify_from_gateway(frame)
        except Exception as exc:  # noqa: BLE001 - counted, reported
            self.tally.verify_failures += 1
            self.tally.errors.append(f"verify {frame.type}: {exc!r}"[:300])


# --- hostile connections beside the load ------------------------------------------------
def framed(payload: bytes) -> bytes:
    return b"%08d" % len(payload) + payload


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
          b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;">]>'
          b'<Msg xmlns="urn:sbdx:1">&c;</Msg>')


class Hostile(threading.Thread):
    """Every ``every`` seconds, one hostile connection: garbage, an HTTP request, an
    oversized length, an XML bomb, a stranger's logon, or half a header then a hang-up."""

    VARIANTS = ("random-bytes", "http", "oversize-len", "xml-bomb", "stranger-logon",
                "half-header")

    def __init__(self, port: int, every: float, seed: int = 7) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.rng = random.Random(seed)
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.wait(self.every):
            variant = self.VARIANTS[i % len(self.VARIANTS)]
            i += 1
            try:
                self.outcomes[(variant, self.attempt(variant))] += 1
            except OSError as exc:
                self.outcomes[(variant, f"oserror:{type(exc).__name__}")] += 1

    def attempt(self, variant: str) -> str:
        if variant == "stranger-logon":
            return self._stranger()
        data = {"random-bytes": os.urandom(self.rng.randint(1, 400)),
                "http": b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n",
                "oversize-len": b"99999999",
                "xml-bomb": framed(b"SBDX1 - - -\n" + LAUGHS),
                "half-header": b"0000"}[variant]
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(data)
            if variant == "half-header":
                return "hung-up"  # we close first: the gateway must just forget it
            return self._outcome(sock)

    def _stranger(self) -> str:
        stranger = TestPeer("EVIL", "BROKER", ec.generate_private_key(ec.SECP256R1()), self.port)
        stranger.connect()
        try:
            rsp = stranger.logon()
            code = rsp.body.get("Code", rsp.body.get("Result", "?"))
            return f"{code}+closed" if stranger.closed_by_gateway(3) else code
        except (ConnectionError, TimeoutError) as exc:
            return type(exc).__name__
        finally:
            stranger.close()

    @staticmethod
    def _outcome(sock: socket.socket) -> str:
        """SYS.ERROR code (+closed), 'closed' or 'silent'."""
        sock.settimeout(3)
        buf, code = b"", None
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return f"{code}+closed" if code else "closed"
                buf += chunk
                if code is None and b"<Code>" in buf:
                    code = buf.split(b"<Code>", 1)[1][:4].decode("ascii", "replace")
        except TimeoutError:
            return code or "silent"
        except ConnectionResetError:
            return f"{code}+reset" if code else "reset"
