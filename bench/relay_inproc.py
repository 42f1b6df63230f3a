"""Gateway CPU per relayed round trip, in one process, without sockets (issue 8 tool).

    python bench/relay_inproc.py [--round-trips 20000] [--batch 16]

The gateway's sans-IO core (gateway.relay.Gateway + two gateway.session.Session) with
its real journal file (WAL, synchronous FULL), real key store, and links that only
collect the bytes written.  A broker and a bank (tests/peer.py builders, their own
ES256 keys, session keys from a real X25519 exchange with the gateway) pre-build
signed, MAC'd frames *outside* the timed sections; the timed sections are only the
gateway's own work: ``receive_bytes`` of a batch of frames and the group-commit
``flush``.  Each round trip: XFER.OUT request in → verified, checked, journaled,
relayed to the bank; the bank's response in → verified, journaled, relayed back.

This isolates the gateway's CPU per round trip from the peers' load and from socket
and scheduler effects, so a code change can be measured to a few µs; the full rig
(bench/relay.py) remains the measurement the targets are judged on.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gateway.config import Config  # noqa: E402
from gateway.framing import FrameDecoder  # noqa: E402
from gateway.journal import Journal  # noqa: E402
from gateway.keystore import KeyStore  # noqa: E402
from gateway.relay import Gateway  # noqa: E402
from gateway.session import Session  # noqa: E402

from conftest import BANK, BROKER, make_home  # noqa: E402
from flows import sign_fields, xfer  # noqa: E402
from peer import TestPeer  # noqa: E402


class Link:
    """Collects what the gateway writes; split into payloads outside the timed code."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.decoder = FrameDecoder()

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        raise RuntimeError("the gateway closed a bench session")

    def peer_public_key(self) -> Any:
        return None

    def take(self) -> list[tuple[str, bytes]]:
        """(envelope line, xml) of every complete frame written since the last call."""
        data, self.out = bytes(self.out), bytearray()
        frames = []
        for payload in self.decoder.feed(data):
            line, xml = payload.split(b"\n", 1)
            frames.append((line.decode(), xml))
        return frames


class Side:
    """One peer (broker or bank) on its own gateway session."""

    def __init__(self, gateway: Gateway, party: str, role: str, key: Any, sid: str) -> None:
        self.link = Link()
        self.session = Session(gateway, self.link, sid)
        gateway.add_session(self.session)
        self.peer = TestPeer(party, role, key, port=0)
        self.gateway = gateway

    def feed(self, data: bytes) -> None:
        self.session.receive_bytes(data)
        self.gateway.flush()

    def open(self) -> None:
        self.peer.send_raw = self.feed  # type: ignore[method-assign]
        _, xml = self.peer.build("SYS.LOGON.REQ", [
            ("PartyId", self.peer.party), ("Role", self.peer.role), ("Nonce", "ab" * 16),
            ("HeartbeatSec", 30)])
        self.feed(self.peer.frame(xml, mac=False))
        self.gateway.tick()  # keyx_after_logon_seconds = 0: the gateway starts KEYX
        self.gateway.flush()
        for line, xml in self.link.take():
            if b"SYS.KEYX.REQ" in xml:
                from lxml import etree

                from peer import Frame
                _, key_id, mac, sig = line.split(" ")
                self.peer.answer_keyx(Frame(key_id, mac, sig, xml, etree.fromstring(xml)))
        assert self.session.ready, f"{self.peer.party} session not keyed"


def response_frames(bank: TestPeer, relayed: list[tuple[str, bytes]], **extra: str) -> bytes:
    from lxml import etree
    out = []
    for _, xml in relayed:
        root = etree.fromstring(xml)
        ns = {"m": "urn:sbdx:1"}
        rtype = root.findtext("m:Head/m:Type", namespaces=ns).replace(".REQ", ".RSP")
        fields: list[tuple[str, Any]] = [("Result", "0000"), ("ResultText", "ok"),
                                         ("BizSn", root.findtext(".//m:BizSn", namespaces=ns))]
        fields += list(extra.items())
        _, rxml = bank.build(rtype, fields, to=BROKER,
                             ref=root.findtext("m:Head/m:MsgId", namespaces=ns))
        out.append(bank.frame(rxml))
    return b"".join(out)


def timed(side: Side, data: bytes, prof: cProfile.Profile | None) -> float:
    """CPU seconds the gateway spends on ``data`` arriving on ``side``'s session."""
    t0 = time.process_time()
    if prof:
        prof.enable()
    side.feed(data)
    if prof:
        prof.disable()
    return time.process_time() - t0


def run(round_trips: int, batch: int, profile: Path | None,
        folder: Path | None = None) -> dict[str, Any]:
    """Relay ``round_trips`` in turns of ``batch`` frames.  The gateway's home goes in a
    temporary folder, removed at the end; or in ``folder``, left as it is for the
    caller, the journal still open and its WAL not yet folded back (bench/wal_pages.py
    reads it)."""
    if folder is not None:
        return _run(round_trips, batch, profile, folder, close=False)
    with tempfile.TemporaryDirectory(prefix="sbdx-inproc-") as tmp:
        return _run(round_trips, batch, profile, Path(tmp), close=True)


def _run(round_trips: int, batch: int, profile: Path | None, tmp: Path,
         close: bool) -> dict[str, Any]:
    home = make_home(tmp / "gw")
    config = Config(keyx_after_logon_seconds=0.0, max_inflight_per_session=batch * 2)
    journal = Journal(tmp / "gw" / "data" / "journal.sqlite3", synchronous=config.journal_synchronous)
    gateway = Gateway(config, KeyStore(home.root / "keys"), journal, time.time)
    broker = Side(gateway, BROKER, "BROKER", home.keys[BROKER], "S1")
    bank = Side(gateway, BANK, "BANK", home.keys[BANK], "S2")
    broker.open()
    bank.open()
    # one agreement, so XFER passes the B300 rule
    _, xml = broker.peer.build("CTS.SIGN.REQ", sign_fields("GTJAS1"), to=BANK,
                               encrypt=("CustName", "IdNo", "Phone"))
    broker.feed(broker.peer.frame(xml))
    bank.feed(response_frames(bank.peer, bank.link.take(), AgreementNo="AG1"))
    assert b"<Result>0000</Result>" in broker.link.take()[-1][1]

    prof = cProfile.Profile() if profile else None
    cpu = 0.0
    done = 0
    while done < round_trips:
        n = min(batch, round_trips - done)
        requests = []
        for i in range(done, done + n):
            _, xml = broker.peer.build("XFER.OUT.REQ", xfer(f"GTJAX{i:08d}", amount="1.00"), to=BANK)
            requests.append(broker.peer.frame(xml))
        cpu += timed(broker, b"".join(requests), prof)
        relayed = bank.link.take()
        assert len(relayed) == n, relayed[-1:]
        cpu += timed(bank, response_frames(bank.peer, relayed, BankSn="B1"), prof)
        back = broker.link.take()
        assert len(back) == n and all(b"<Result>0000</Result>" in x for _, x in back), back[-1:]
        done += n
    if prof and profile:
        prof.dump_stats(str(profile))
    if close:
        journal.close()
    return {"round_trips": done, "batch": batch,
            "gateway_cpu_us_per_rt": round(cpu / done * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16, help="frames per reactor turn")
    p.add_argument("--profile", type=Path, help="write a cProfile of the timed sections here")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    result = run(args.round_trips, args.batch, args.profile)
    print(json.dumps(result))
    if args.profile:
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
