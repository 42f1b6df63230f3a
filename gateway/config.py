"""Gateway configuration (PROTOCOL §9): ``HOME/gateway.toml``, table ``[gateway]``.

Every limit is a named field with a default and a one-line reason.  Keys of
§9 keep their protocol names; the extra ones are documented in
docs/operations.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CONFIG_FILE = "gateway.toml"
_PARTY = re.compile(r"[A-Z0-9]{2,12}\Z")


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a bad value."""


@dataclass(frozen=True)
class JournalSettings:
    """The ``[journal]`` table (docs/operations.md "Retention")."""

    #: Days a business record stays final before its message evidence moves to
    #: ``data/archive/YYYYMM.sqlite3`` (PROTOCOL §11); 0 keeps everything in the journal.
    #: Fractions are allowed (0.5: twelve hours; the soak bench uses seconds' worth).
    retention_days: float = 0.0

    @property
    def retention_seconds(self) -> float:
        return self.retention_days * 86400.0


def journal_settings(table: dict[str, Any]) -> JournalSettings:
    """The ``[journal]`` table, checked; unknown keys are an error."""
    for key in table:
        if key != "retention_days":
            raise ConfigError(f"unknown setting [journal].{key}")
    days = table.get("retention_days", 0)
    if (isinstance(days, bool) or not isinstance(days, int | float)
            or not 0 <= days < float("inf")):
        raise ConfigError("[journal] retention_days must be a number of days, 0 or more "
                          "(0 keeps all evidence in the journal)")
    return JournalSettings(float(days))


@dataclass(frozen=True)
class Config:
    #: The gateway's own PartyId (§1).
    party: str = "GW01"
    #: Where peers connect in (§9).
    listen: str = "127.0.0.1:7700"
    #: Heartbeat interval we announce and expect; 3 silent intervals close (§5.4).
    heartbeat_seconds: float = 30.0
    #: How long a relayed request may wait for its answer before B330 + reversal (§6).
    relay_timeout_seconds: float = 10.0
    #: Session key lifetime by time (§5.3).
    rotate_seconds: float = 3600.0
    #: Session key lifetime by messages (§5.3).
    rotate_messages: int = 100_000
    #: How long a replaced key is still accepted (§5.3).
    grace_seconds: float = 30.0
    #: Allowed distance between a message's Time and our clock (§5).
    max_skew_seconds: float = 300.0
    #: Largest payload accepted (§2): bounds per-connection buffer memory.
    max_frame_bytes: int = 1024 * 1024
    #: Non-business days besides weekends (§6 OTC booking).
    holidays: tuple[dt.date, ...] = ()
    # --- gateway-specific limits (docs/operations.md) -------------------------
    #: Requests relayed for one session and not yet answered: beyond it, S902.
    max_inflight_per_session: int = 1000
    #: Days MsgIds are remembered for replay defence (§5 asks for at least 7).
    replay_retention_days: int = 8
    #: Seconds after LOGON before the gateway starts a KEYX itself (§5.3).
    keyx_after_logon_seconds: float = 5.0
    #: Bytes queued for a peer that does not read: beyond it, the session closes.
    max_send_buffer_bytes: int = 16 * 1024 * 1024
    #: Bytes read from one socket per reactor turn (bounds the work done before answers
    #: leave; also Twisted's send-buffer threshold for pausing the reader).
    read_chunk_bytes: int = 16 * 1024
    #: Simultaneous inbound connections accepted; more are closed at once.
    max_connections: int = 256
    #: SQLite ``synchronous`` for the journal: FULL survives power loss.
    journal_synchronous: str = "FULL"
    #: First and largest delay between reversal retries, seconds.
    reversal_retry_initial_seconds: float = 1.0
    reversal_retry_max_seconds: float = 60.0
    #: Serve TLS on the listen port (client certificates required).
    tls: bool = False
    # --- cost before and after logon (docs/operations.md "Limits on a peer") ----
    #: A connection with no verified SYS.LOGON by then is closed (it holds a slot).
    logon_timeout_seconds: float = 10.0
    #: Smallest HeartbeatSec a peer may ask for at logon: below it LOGON.RSP E111.
    min_heartbeat_seconds: int = 5
    #: Bytes of refused pre-logon frames (and of their SYS.ERROR) journaled per minute
    #: over all connections; past it such refusals are only counted.
    unauthenticated_evidence_bytes_per_minute: int = 256 * 1024
    #: SYS.ECHO.REQ one session may send at once, then ``echo_per_second`` (else S902).
    echo_burst: int = 10
    echo_per_second: float = 1.0
    #: Seconds between the SYS.KEYX.REQ a peer may start, after a burst of 2 (else S902).
    keyx_interval_seconds: float = 10.0
    #: Messages over their limit from one session within a minute before it is closed.
    max_over_limit_per_minute: int = 100
    #: Seconds a TLS connection may take to complete its handshake before it is cut.
    tls_handshake_seconds: float = 10.0
    # --- table [journal] (PROTOCOL §12; docs/operations.md) ------------------------
    #: ``url``: the store.  sqlite:///PATH (relative to the home) or postgresql://…
    journal_url: str = "sqlite:///data/journal.sqlite3"
    #: ``failover_seconds``: a standby takes a dead active's lease within this time.
    journal_failover_seconds: float = 5.0
    #: ``statement_timeout_seconds``: PostgreSQL's statement_timeout and lock_timeout on
    #: the gateway's connections (a hung database becomes an error, not a hang).
    journal_statement_timeout_seconds: float = 10.0
    #: ``background_commit``: with PostgreSQL, the end-of-turn COMMIT on a pool thread
    #: instead of the reactor's (docs/operations.md: measured slower on a two-core box).
    journal_background_commit: bool = False
    #: The ``[journal]`` table (not keys of ``[gateway]``).
    journal: JournalSettings = field(default_factory=JournalSettings)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen)


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 literal: [::1]:7700
        host = host[1:-1]
    elif ":" in host:  # unbracketed IPv6 (::7700) or a stray colon
        host = ""
    if (not sep or not (port.isascii() and port.isdigit()) or not host
            or "[" in host or "]" in host):
        raise ConfigError(f"address {text!r} is not HOST:PORT")
    return host, int(port)


def check_address(text: str, lowest_port: int = 1) -> tuple[str, int]:
    """``HOST:PORT`` as :func:`split_host_port` reads it, with a port from
    ``lowest_port`` (0 to listen on any free port) to 65535 and no whitespace in the
    host (IPv6 as ``[::1]:7700``)."""
    host, port = split_host_port(text)
    if not lowest_port <= port <= 65535 or any(c.isspace() for c in host):
        raise ConfigError(f"address {text!r} is not HOST:PORT (port {lowest_port}-65535)")
    return host, port


def check_address_list(text: str, lowest_port: int = 1) -> tuple[tuple[str, int], ...]:
    """``HOST:PORT[,HOST:PORT…]`` (PROTOCOL §12: peers and ``--connect`` take a list,
    tried in turn), each element as :func:`check_address` reads it; spaces around the
    commas are allowed.  A bad element is named by its place and its text."""
    parts = [part.strip() for part in text.split(",")]
    out = []
    for number, part in enumerate(parts, 1):
        try:
            out.append(check_address(part, lowest_port))
        except ConfigError as exc:
            if len(parts) == 1:
                raise
            raise ConfigError(f"address {number} of {len(parts)} in {text!r}: {exc}"
                              " (a list is HOST:PORT,HOST:PORT,…)") from None
    return tuple(out)


def address_list_text(text: str) -> str:
    """An address list as it is stored and shown: its elements, checked, joined by
    commas without spaces."""
    check_address_list(text)
    return ",".join(part.strip() for part in text.split(","))


def address_option(lowest_port: int) -> Callable[[str], str]:
    """An argparse ``type`` for a HOST:PORT option: a bad address is a usage error
    (exit 64), never a traceback when the address is first used."""
    def address(text: str) -> str:
        try:
            check_address(text, lowest_port)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return address


def address_list_option(text: str) -> str:
    """The argparse ``type`` of ``peer add --connect`` and ``sim --connect``: one
    address or a comma-separated list (§12); a bad element is a usage error naming it."""
    try:
        return address_list_text(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: ``peer add --connect``, ``sim --connect``: HOST:PORT or a list of them (§12).
connect_address = address_list_option
#: ``serve --listen`` (port 0: any free port).
listen_address = address_option(0)


def _coerce(name: str, default: Any, value: Any) -> Any:
    if name == "holidays":
        try:
            return tuple(v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v))
                         for v in value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"holidays: {exc}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if isinstance(default, int | float) and not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number")
    if isinstance(default, int) and not isinstance(default, bool):
        if int(value) != value or value <= 0:
            raise ConfigError(f"{name} must be a positive whole number")
        return int(value)
    if isinstance(default, float):
        if value <= 0:
            raise ConfigError(f"{name} must be positive")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


#: The keys of table ``[journal]`` kept as Config fields (the store, §12); the others
#: (retention, §11) are :class:`JournalSettings`.
JOURNAL_KEYS = {"url": "journal_url", "failover_seconds": "journal_failover_seconds",
                "statement_timeout_seconds": "journal_statement_timeout_seconds",
                "background_commit": "journal_background_commit"}
#: ``[journal] url`` of the embedded journal (the default).
SQLITE_DEFAULT_URL = "sqlite:///data/journal.sqlite3"


#: ``[journal] retention_days`` above 0 with a PostgreSQL url (PROTOCOL §11, §12).
RETENTION_ON_POSTGRESQL = (
    "[journal] retention_days works with the SQLite journal only: remove it (or set 0)"
    " with a postgresql:// url; the evidence then stays in PostgreSQL, shared by both"
    " gateways: size the database for it and back it up with pg_dump or base backups"
    " (docs/operations.md \"Retention\")")


def is_postgresql(url: str) -> bool:
    """Whether ``[journal] url`` names PostgreSQL (an active/standby pair, §12)."""
    return url.startswith(("postgresql://", "postgres://"))


def from_mapping(values: dict[str, Any], journal: dict[str, Any] | None = None) -> Config:
    """Build a Config from the ``[gateway]`` table (and the ``[journal]`` one); unknown
    keys are an error."""
    known = {f.name: f for f in fields(Config)
             if f.name not in ("extra", "journal") and f.name not in JOURNAL_KEYS.values()}
    defaults = Config()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting [gateway].{key}")
        kwargs[key] = _coerce(key, getattr(defaults, key), value)
    store_keys = {k: v for k, v in (journal or {}).items() if k in JOURNAL_KEYS}
    lifecycle = {k: v for k, v in (journal or {}).items() if k not in JOURNAL_KEYS}
    for key, value in store_keys.items():
        name = JOURNAL_KEYS[key]
        kwargs[name] = _coerce(f"[journal].{key}", getattr(defaults, name), value)
    try:
        settings = journal_settings(lifecycle)
    except ConfigError as exc:
        if "unknown setting" in str(exc):
            raise ConfigError(f"{exc} (known: url, failover_seconds, "
                              "statement_timeout_seconds, background_commit, retention_days)"
                              ) from None
        raise
    cfg = Config(**kwargs, journal=settings, extra={"explicit": frozenset(kwargs)})
    if cfg.journal.retention_days > 0 and not cfg.journal_url.startswith("sqlite:"):
        raise ConfigError(RETENTION_ON_POSTGRESQL)
    if cfg.replay_retention_days < 7:
        raise ConfigError("replay_retention_days must be at least 7 (PROTOCOL §5)")
    if not _PARTY.match(cfg.party):
        raise ConfigError("party must match [A-Z0-9]{2,12}")
    if cfg.journal_synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
        raise ConfigError("journal_synchronous must be FULL, EXTRA, NORMAL or OFF")
    check_address(cfg.listen, lowest_port=0)
    from .store import check_url

    try:
        check_url(cfg.journal_url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.min_heartbeat_seconds > 3600:
        raise ConfigError("min_heartbeat_seconds must be at most 3600 (HeartbeatSec's maximum)")
    return cfg


def load(home: Path) -> Config:
    """Read ``HOME/gateway.toml`` if it exists; defaults otherwise."""
    path = home / CONFIG_FILE
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    journal = data.get("journal", {})
    if not isinstance(journal, dict):
        raise ConfigError(f"{path}: journal must be a table ([journal])")
    return from_mapping(data.get("gateway", {}), journal)


def with_key_store_party(cfg: Config, store_party: str | None) -> Config:
    """The PartyId ``gateway init --party`` wrote into the key store is the gateway's
    identity (its certificate, its EOD files): ``serve`` uses it unless the config names
    the party too, and then both must agree."""
    if store_party is None or store_party == cfg.party:
        return cfg
    if "party" in cfg.extra.get("explicit", ()):
        raise ConfigError(f"party {cfg.party} in {CONFIG_FILE} differs from {store_party} "
                          "of the key store (gateway init --party)")
    return replace(cfg, party=store_party)
