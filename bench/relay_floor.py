"""The floor of one relayed round trip: what a verifying, signing, journaling relay
cannot avoid, measured operation by operation in a plain Python process of the same
kind as the gateway (same interpreter, lxml, cryptography, SQLite).

Per hop (the request hop broker → gateway → bank, then the response hop back):
parse + XSD validate, MAC verify, signature verify (ES256), build, MAC, sign (ES256),
and the hop's journal writes (evidence in and out, the MsgId remembered, the business
record inserted or updated) committed in groups as the gateway's group commit does.
A round trip is two hops. Prints one JSON object (µs per operation and the sums).

Two measurements of the same operations:

* ``ops_sum_us`` — each operation alone in a tight loop (median of batches), summed.
  Every operation then runs with its code and data hot in the CPU caches, which no
  relay can have: between two signatures a relay parses, hashes and journals.
* ``round_trip_us`` (the denominator of ``gateway CPU / floor``) — the operations of one
  round trip run *in sequence*, request hop then response hop, exactly once each per
  iteration, as a relay that did nothing else would run them.  On this box the
  interleaving alone costs the ops ~1.3x their tight-loop time (ES256 sign 23 -> 30 µs,
  parse + XSD 25 -> 38 µs, HMAC 1.8 -> 5 µs), which is what the issue's orientation
  figures (sign ~30 µs, parse + XSD ~35 µs, a verify-and-answer hop 250-300 µs) describe.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from gateway.journal import Journal, Record  # noqa: E402
from gateway.mac import mac_field, verify_mac  # noqa: E402
from gateway.message import Head, build_xml, parse_message  # noqa: E402
from gateway.signature import SignatureField, Signer, verify  # noqa: E402

T = "2026-11-25T10:00:00.000+08:00"


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Median of five timed batches, µs per call."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 10:
        fn()
        n += 1
    batch = max(n, 10)
    results = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        results.append((time.perf_counter() - t0) / batch * 1e6)
    return sorted(results)[2]


def hop_messages() -> tuple[tuple[Head, dict[str, str]], tuple[Head, dict[str, str]]]:
    req = (Head(type="XFER.OUT.REQ", msg_id="GTJA1790000000000000001", from_party="GTJA",
                to_party="CCB", time=T, trade_date="2026-11-25"),
           {"BizSn": "GTJA00000001", "FundAcct": "100020003000", "WalletId": "0071130812093028",
            "Amount": "1.00", "Ccy": "CNY"})
    rsp = (Head(type="XFER.OUT.RSP", msg_id="CCB1790000000000000001", from_party="CCB",
                to_party="GTJA", time=T, trade_date="2026-11-25",
                ref_id="GTJA1790000000000000001"),
           {"Result": "0000", "ResultText": "交易成功", "BizSn": "GTJA00000001",
            "BankSn": "BK0123456789ABCDEF0123"})
    return req, rsp


def measure(seconds: float, synchronous: str, group: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="sbdx-floor-") as tmp:  # ~40 MB of journal
        return _measure(seconds, synchronous, group, Path(tmp))


def _measure(seconds: float, synchronous: str, group: int, tmp: Path) -> dict[str, object]:
    sender = Signer(ec.generate_private_key(ec.SECP256R1()))
    gateway = Signer(ec.generate_private_key(ec.SECP256R1()))
    mac_key = os.urandom(32)
    ops: dict[str, dict[str, float]] = {}
    journal = Journal(tmp / "journal.sqlite3", synchronous=synchronous)
    counter = iter(range(10**9))
    journal_hops: dict[str, Callable[[], None]] = {}
    requested: collections.deque[str] = collections.deque()
    settled: list[str] = []
    for hop, (head, body) in zip(("request", "response"), hop_messages(), strict=True):
        xml = build_xml(head, body)
        mac = mac_field(mac_key, xml)
        sig = sender.sign(xml).format()
        field = SignatureField.parse(sig)

        def journal_hop(hop: str = hop, xml: bytes = xml) -> None:
            i = next(counter)
            msg_id = f"GTJAM{i}"  # also the BizSn: GTJA's own serial
            journal.log_message(0.0, "IN", "S1", "GTJA", "XFER.OUT.REQ", msg_id, None, b"env",
                                xml)
            journal.remember("GTJA", msg_id, 0.0)
            if hop == "request":
                journal.insert_record(Record(origin="GTJA", biz_type="XFER.OUT", biz_sn=msg_id,
                                             receiver="CCB", msg_id=msg_id, content_hash="h",
                                             state="PENDING", trade_date="2026-11-25",
                                             amount_fen=100), 0.0)
                requested.append(msg_id)
            else:  # the answer settles a record that exists (the oldest not yet answered)
                biz_sn = requested.popleft() if requested else settled[i % len(settled)]
                settled.append(biz_sn)
                journal.update_record(("GTJA", "XFER.OUT", biz_sn), 0.0,
                                      state="SUCCEEDED", result="0000", response_xml=xml)
            journal.log_message(0.0, "OUT", "S2", "CCB", "XFER.OUT.REQ", msg_id, None, b"env",
                                xml)
            if i % group == group - 1:
                journal.flush()

        journal_hops[hop] = journal_hop
        ops[hop] = {
            "parse_validate": per_call_us(lambda xml=xml: parse_message(xml), seconds),
            "mac_verify": per_call_us(lambda xml=xml, mac=mac: verify_mac(mac_key, xml, mac),
                                      seconds),
            "sig_verify": per_call_us(
                lambda xml=xml, field=field: verify(sender.public_key, field, xml), seconds),
            "build": per_call_us(lambda head=head, body=body: build_xml(head, body), seconds),
            "mac": per_call_us(lambda xml=xml: mac_field(mac_key, xml), seconds),
            "sign": per_call_us(lambda xml=xml: gateway.sign(xml), seconds),
            "journal": per_call_us(journal_hop, seconds),
        }
    sequence = [_HopSequence(head, body, sender, gateway, mac_key, journal_hops[hop])
                for hop, (head, body) in zip(("request", "response"), hop_messages(),
                                             strict=True)]

    def round_trip() -> None:
        for step in sequence:
            step()

    sequential = per_call_us(round_trip, seconds * 4)
    in_sequence = _timed_in_sequence(sequence, seconds * 2)
    journal.close()
    hops = {hop: round(sum(v.values()), 1) for hop, v in ops.items()}
    return {"ops_us": {h: {k: round(v, 1) for k, v in o.items()} for h, o in ops.items()},
            "hop_us": hops, "ops_sum_us": round(sum(hops.values()), 1),
            "round_trip_us": round(sequential, 1), "ops_in_sequence_us": in_sequence,
            "synchronous": synchronous, "commit_group": group}


OPS = ("parse_validate", "mac_verify", "sig_verify", "build", "mac", "sign", "journal")


class _HopSequence:
    """One hop's operations in the order a relay runs them, once each per call."""

    def __init__(self, head: Head, body: dict[str, str], sender: Signer, gateway: Signer,
                 mac_key: bytes, journal_hop: Callable[[], None]) -> None:
        xml = build_xml(head, body)
        mac = mac_field(mac_key, xml)
        field = SignatureField.parse(sender.sign(xml).format())
        onward: list[bytes] = [xml]

        def build() -> None:
            onward[0] = build_xml(head, body)

        self.ops: tuple[Callable[[], object], ...] = (
            lambda: parse_message(xml), lambda: verify_mac(mac_key, xml, mac),
            lambda: verify(sender.public_key, field, xml), build,
            lambda: mac_field(mac_key, onward[0]), lambda: gateway.sign(onward[0]),
            journal_hop)

    def __call__(self) -> None:
        for op in self.ops:
            op()


def _timed_in_sequence(sequence: list[_HopSequence],
                       seconds: float) -> dict[str, dict[str, float]]:
    """µs of each operation when timed inside the sequence (what interleaving costs it)."""
    spent = [[0.0] * len(OPS) for _ in sequence]
    clock = time.perf_counter
    n, start = 0, clock()
    while clock() - start < seconds:
        for h, hop in enumerate(sequence):
            for i, op in enumerate(hop.ops):
                t0 = clock()
                op()
                spent[h][i] += clock() - t0
        n += 1
    return {name: {op: round(spent[h][i] / n * 1e6, 1) for i, op in enumerate(OPS)}
            for h, name in enumerate(("request", "response"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=1.0, help="time per operation")
    p.add_argument("--synchronous", default="FULL")
    p.add_argument("--group", type=int, default=8, help="hops per journal commit")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.seconds, args.synchronous, args.group)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
