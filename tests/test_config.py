"""PROTOCOL §9: the `[gateway]` settings and their defaults."""
from __future__ import annotations

from pathlib import Path

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
