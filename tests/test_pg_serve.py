"""`gateway serve` with ``[journal] url = postgresql://…`` (PROTOCOL §12) over real
loopback sockets: the gateway migrates an empty database, relays a transfer end to end
with every row in PostgreSQL (no SQLite journal file), and after a restart answers a
repeat from what PostgreSQL kept."""
from __future__ import annotations

from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from test_journal_show import shown_json  # noqa: E402
from test_server import bank_answers, xfer  # noqa: E402

from conftest import BANK, BROKER, GatewayHome  # noqa: E402
from flows import signed  # noqa: E402


def _use_postgres(home: GatewayHome, url: str, background: bool = False) -> None:
    home.write_config(relay_timeout_seconds=5.0)
    with (home.root / "gateway.toml").open("a", encoding="utf-8") as f:
        f.write(f'[journal]\nurl = "{url}"\nfailover_seconds = 5\n'
                f'background_commit = {"true" if background else "false"}\n')


@pytest.mark.parametrize("background", [False, True], ids=["commit", "background_commit"])
def test_a_gateway_on_postgresql_relays_and_remembers_across_a_restart(
        pg_url: str, home: GatewayHome, start_gateway: Any, background: bool) -> None:
    _use_postgres(home, pg_url, background)  # an empty database: the gateway migrates it
    gw = start_gateway()
    gw.wait_for_log(r"active: lease epoch \d+ taken")  # alone on the url: a pair of one (§12)
    assert ("commits run off the reactor thread" in gw.log_text()) == background
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAP1"), to=BANK)
    req = bank_answers(bank, bank_sn="CCBP1")
    assert req.head("MsgId") == msg_id
    rsp = broker.recv("XFER.OUT.RSP")
    broker.verify_from_gateway(rsp)
    assert (rsp.body["Result"], rsp.body["BankSn"]) == ("0000", "CCBP1")
    bank.close()
    broker.close()
    assert gw.stop() == 0
    with psycopg.connect(pg_url) as conn:
        state = conn.execute("SELECT state, bank_sn, amount_fen FROM record WHERE"
                             " biz_sn = 'GTJAP1'").fetchall()
        evidence = conn.execute("SELECT count(*) FROM message WHERE msg_id = %s",
                                (msg_id,)).fetchone()[0]
    assert state == [("SUCCEEDED", "CCBP1", 123450)] and evidence >= 2  # in, relayed
    assert not (home.root / "data" / "journal.sqlite3").exists()
    shown = shown_json(home.root, "GTJAP1")  # journal show reads [journal] url
    (view,) = shown["records"]
    assert view["state"] == "SUCCEEDED" and len(view["messages"]) >= 4

    again = start_gateway()  # a restart: the record is read back from PostgreSQL
    again.wait_for_log(r"active: lease epoch \d+ taken")
    bank, broker = again.peer(BANK).open_session(), again.peer(BROKER).open_session()
    broker.send("XFER.OUT.REQ", xfer("GTJAP1"), to=BANK)  # a repeat: from the journal
    repeat = broker.recv("XFER.OUT.RSP")
    assert (repeat.body["Result"], repeat.body["BankSn"]) == ("0000", "CCBP1")
    with pytest.raises(TimeoutError):
        bank.recv("XFER.OUT.REQ", timeout=0.5)  # never relayed twice
    bank.close()
    broker.close()
    assert again.stop() == 0
