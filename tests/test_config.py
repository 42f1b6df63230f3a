"""PROTOCOL §9: the `[gateway]` settings and their defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config, from_mapping, load

#: §9 (and §1, §2, §5, §6): every setting the protocol names, with its default.
PROTOCOL_DEFAULTS = {
    "party": "GW01",
    "listen": "127.0.0.1:7700",
    "heartbeat_seconds": 30,
    "relay_timeout_seconds": 10,
    "rotate_seconds": 3600,
    "rotate_messages": 100000,
    "grace_seconds": 30,
    "max_skew_seconds": 300,
    "max_frame_bytes": 1048576,
    "holidays": (),
}


def test_protocol_defaults_are_exactly_those_of_section_9() -> None:
    cfg = Config()
    assert {name: getattr(cfg, name) for name in PROTOCOL_DEFAULTS} == PROTOCOL_DEFAULTS
    assert cfg.listen_host_port == ("127.0.0.1", 7700)


def test_no_config_file_and_an_empty_table_give_the_same_defaults(tmp_path: Path) -> None:
    assert load(tmp_path) == Config()
    (tmp_path / "gateway.toml").write_text("[gateway]\n", "utf-8")
    assert load(tmp_path) == Config() == from_mapping({})
    for name, value in PROTOCOL_DEFAULTS.items():
        assert getattr(load(tmp_path), name) == value, name


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7700", ("127.0.0.1", 7700)), ("localhost:7700", ("localhost", 7700)),
    ("[::1]:7700", ("::1", 7700)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::]:0", ("::", 0))])
def test_addresses_a_listener_accepts(text: str, expected: tuple[str, int]) -> None:
    from gateway.config import check_address

    assert check_address(text, lowest_port=0) == expected


@pytest.mark.parametrize("text", ["7700", "host:", ":7700", "[]:7700", "::7700", "a]:1",
                                  "[a:1", "h ost:1", "host:٣", "host:65536", "host:x"])
def test_addresses_that_are_not_host_port(text: str) -> None:
    from gateway.config import ConfigError, check_address

    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        check_address(text, lowest_port=0)


def test_the_journal_table_names_the_store_and_the_failover_time(tmp_path: Path) -> None:
    """PROTOCOL §12: ``[journal] url`` (default the SQLite file of the home) and
    ``failover_seconds`` (default 5); a url of neither form and an unknown key stop."""
    from gateway.config import ConfigError

    assert (Config().journal_url, Config().journal_failover_seconds) == (
        "sqlite:///data/journal.sqlite3", 5.0)
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nparty = "GW01"\n[journal]\nurl = "postgresql://db/sbdx"\n'
        "failover_seconds = 2\n", "utf-8")
    cfg = load(tmp_path)
    assert (cfg.journal_url, cfg.journal_failover_seconds) == ("postgresql://db/sbdx", 2.0)
    with pytest.raises(ConfigError, match="neither sqlite:///PATH .* nor postgresql://"):
        from_mapping({}, {"url": "mysql://db"})
    with pytest.raises(ConfigError, match=r"unknown setting \[journal\].path"):
        from_mapping({}, {"path": "x"})
    with pytest.raises(ConfigError, match="must be positive"):
        from_mapping({}, {"failover_seconds": 0})
    with pytest.raises(ConfigError, match=r"unknown setting \[gateway\].journal_url"):
        from_mapping({"journal_url": "sqlite:///x"})
