"""``[journal] url`` and ``failover_seconds`` (PROTOCOL §12): checked, with what to do."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from gateway.config import ConfigError, from_mapping


def test_defaults_are_the_embedded_journal_and_five_seconds() -> None:
    cfg = from_mapping({})
    assert cfg.journal_url == "sqlite:///data/journal.sqlite3"
    assert cfg.journal_failover_seconds == 5.0
    pg = from_mapping({}, {"url": "postgresql://u@db/x", "failover_seconds": 2})
    assert pg.journal_url == "postgresql://u@db/x" and pg.journal_failover_seconds == 2.0


def test_statement_timeout_defaults_to_ten_seconds_and_is_read() -> None:
    assert from_mapping({}).journal_statement_timeout_seconds == 10.0
    cfg = from_mapping({}, {"url": "postgresql://u@db/x", "statement_timeout_seconds": 2.5})
    assert cfg.journal_statement_timeout_seconds == 2.5


@pytest.mark.parametrize(("table", "says"), [
    ({"statement_timeout_seconds": 0},
     r"\[journal\].statement_timeout_seconds must be positive"),
    ({"url": "mysql://db/x"}, "neither sqlite:///PATH .* nor postgresql://"),
    ({"failover_seconds": 0}, r"\[journal\].failover_seconds must be positive"),
    ({"failover_seconds": "5"}, r"\[journal\].failover_seconds must be a number"),
    ({"failover": 5}, r"unknown setting \[journal\].failover \(known: url, failover_seconds"),
    ({"background_commit": "yes"}, r"\[journal\].background_commit must be true or false"),
])
def test_a_bad_journal_setting_says_what_is_wrong(table: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        from_mapping({}, table)


def test_serve_with_an_unreachable_postgresql_exits_1_in_one_line_without_the_password(
        home) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("psycopg")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (home.root / "gateway.toml").write_text(
        f'[journal]\nurl = "postgresql://sbdx:s3cret@127.0.0.1:{port}/gw"\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), "serve",
                          "--listen", "127.0.0.1:0", "--ops-listen", ""],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "gateway serve: could not start: cannot connect to the PostgreSQL journal" in out.stderr
    assert "(check [journal] url and that the server runs)" in out.stderr
    assert "s3cret" not in out.stderr and "Traceback" not in out.stderr, out.stderr
