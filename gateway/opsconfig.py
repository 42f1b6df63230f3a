"""PROTOCOL §10 settings: ``gateway.toml``'s ``[ops]`` table and the ops token.

``[ops]`` says where the monitoring endpoint listens and which parties must be
connected for the gateway to be ready; the one ``[alerts]`` key read here,
``peer_down_seconds``, belongs to the same readiness check (the other ``[alerts]``
keys are read by the alerts module).  The token is the content of ``keys/ops.token``,
made 0600 by ``gateway init`` (or by ``serve`` when it is missing).
"""
from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import CONFIG_FILE, ConfigError, check_address
from .filemodes import FILE_MODE

TOKEN_FILE = "ops.token"
_PARTY = re.compile(r"[A-Z0-9]{2,12}\Z")
#: What a token is: 64 hex digits (256 random bits); a hand-made one may be any
#: printable ASCII without spaces, 16 to 256 characters.
_TOKEN = re.compile(r"[\x21-\x7e]{16,256}\Z")


@dataclass(frozen=True)
class OpsConfig:
    #: Where the ops HTTP endpoint listens (§10); "" serves none.
    listen: str = "127.0.0.1:7780"
    #: Parties that must have a ready session for /readyz (and for peer_down).
    required_peers: tuple[str, ...] = ()
    #: ``[alerts] peer_down_seconds``: a required party down this long is an alert.
    peer_down_seconds: float = 60.0
    #: /healthz fails when no journal flush succeeded for this long (the reactor
    #: flushes every 0.2 s while it runs).
    healthz_flush_seconds: float = 10.0
    #: Seconds between the operator page's refreshes.
    page_refresh_seconds: float = 5.0
    #: The day's business totals are read from the journal at most this often (the
    #: query reads all of the day's records in the reactor thread).
    business_cache_seconds: float = 5.0
    #: Drop folders of `gateway eod watch`: their reports feed sbdx_eod_files_total
    #: and the page's EOD results (the watcher is a process of its own).
    eod_dirs: tuple[Path, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.listen != ""

    def with_listen(self, listen: str | None) -> OpsConfig:
        """``serve --ops-listen`` instead of the file's ``listen``."""
        if listen is None:
            return self
        if listen:
            check_address(listen, lowest_port=0)
        return replace(self, listen=listen)


def seconds_setting(table: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[{table}] {name} must be a positive number of seconds")
    return float(value)


def from_tables(ops: dict[str, Any], alerts: dict[str, Any], home: Path) -> OpsConfig:
    """The ``[ops]`` table (unknown keys are an error) and ``[alerts] peer_down_seconds``."""
    known = {"listen", "required_peers", "healthz_flush_seconds", "page_refresh_seconds",
             "business_cache_seconds", "eod_dirs"}
    unknown = set(ops) - known
    if unknown:
        raise ConfigError(f"unknown setting [ops].{sorted(unknown)[0]}")
    cfg = OpsConfig()
    listen = ops.get("listen", cfg.listen)
    if not isinstance(listen, str):
        raise ConfigError("[ops] listen must be a string (\"\" disables the endpoint)")
    if listen:
        check_address(listen, lowest_port=0)
    peers = ops.get("required_peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) and _PARTY.match(p)
                                              for p in peers):
        raise ConfigError("[ops] required_peers must be a list of PartyIds")
    dirs = ops.get("eod_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
        raise ConfigError("[ops] eod_dirs must be a list of folders")
    return OpsConfig(
        listen=listen, required_peers=tuple(dict.fromkeys(peers)),
        peer_down_seconds=seconds_setting("alerts", "peer_down_seconds",
                                   alerts.get("peer_down_seconds", cfg.peer_down_seconds)),
        healthz_flush_seconds=seconds_setting("ops", "healthz_flush_seconds", ops.get(
            "healthz_flush_seconds", cfg.healthz_flush_seconds)),
        page_refresh_seconds=seconds_setting("ops", "page_refresh_seconds", ops.get(
            "page_refresh_seconds", cfg.page_refresh_seconds)),
        business_cache_seconds=seconds_setting("ops", "business_cache_seconds", ops.get(
            "business_cache_seconds", cfg.business_cache_seconds)),
        eod_dirs=tuple(home / d for d in dirs))  # relative to the home, absolute kept


def load(home: Path) -> OpsConfig:
    """``HOME/gateway.toml``'s ``[ops]`` (defaults without the file or the table)."""
    path = home / CONFIG_FILE
    if not path.exists():
        return OpsConfig()
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    ops, alerts = data.get("ops", {}), data.get("alerts", {})
    if not isinstance(ops, dict) or not isinstance(alerts, dict):
        raise ConfigError(f"{path}: [ops] and [alerts] must be tables")
    return from_tables(ops, alerts, home)


# --- the token -----------------------------------------------------------------------
class TokenError(Exception):
    """keys/ops.token is missing or unusable; the message says what to do."""


def read_token(keys_dir: Path) -> str:
    path = keys_dir / TOKEN_FILE
    try:
        token = path.read_text("ascii").strip()
    except FileNotFoundError:
        raise TokenError(f"{path} is missing (`gateway init` makes it; `gateway serve` "
                         "makes one when it starts)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{path} is unreadable: {exc}") from None
    if not _TOKEN.match(token):
        raise TokenError(f"{path} does not hold a token (16-256 printable characters, "
                         "no spaces); delete it and restart `gateway serve` to make one")
    return token


def make_token(keys_dir: Path) -> bool:
    """Write a new random token to ``keys/ops.token`` (0600) unless there is one;
    True if it was made."""
    path = keys_dir / TOKEN_FILE
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, FILE_MODE)  # an existing token is never replaced
    except FileExistsError:
        return False
    with open(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    return True
