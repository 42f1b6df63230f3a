"""``gateway status``, ``suspend`` and ``resume``: the running gateway's ops API
(PROTOCOL §9, §10, §11): ``GET /api/status``, ``POST /api/suspend``, ``/api/resume``.

The address is ``[ops] listen`` of ``gateway.toml``, the token the content of
``keys/ops.token``; a gateway that does not answer is one line and exit 1.
"""
from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from .config import ConfigError, split_host_port
from .opsconfig import TokenError, load, read_token

TIMEOUT_SECONDS = 10.0
#: A wildcard listen address is asked on the loopback of its family.
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class StatusError(Exception):
    """Why the status could not be had, in one line."""


def fetch_status(home: Path) -> dict[str, Any]:
    return _ask(home, "GET", "/api/status")


def change_suspension(home: Path, action: str, party: str | None,
                      reason: str | None = None) -> dict[str, Any]:
    """``POST /api/suspend`` or ``/api/resume`` (§11): the answer (``changed``, ``text``,
    ``suspensions``); a refusal (HTTP 400) is a StatusError with the gateway's reason."""
    assert action in ("suspend", "resume")
    fields: dict[str, str] = {}
    if party is not None:
        fields["party"] = party
    if reason is not None:
        fields["reason"] = reason
    return _ask(home, "POST", f"/api/{action}", json.dumps(fields).encode())


def _ask(home: Path, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
    try:
        ops = load(home)
        token = read_token(home / "keys")
    except (ConfigError, TokenError) as exc:
        raise StatusError(str(exc)) from None
    if not ops.enabled:
        raise StatusError("[ops] listen is empty in gateway.toml: the gateway serves no "
                          "ops endpoint to ask")
    host, port = split_host_port(ops.listen)
    if port == 0:
        raise StatusError("[ops] listen has port 0 (any free port): name the port in "
                          "gateway.toml to use `gateway status`, `suspend` and `resume`")
    host = _WILDCARD.get(host, host)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
    except (ConnectionRefusedError, socket.gaierror) as exc:
        raise StatusError(f"no gateway answers on {where} ({exc.strerror or exc}): is "
                          "`gateway serve` running? (start it, or check [ops] listen in "
                          "gateway.toml)") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise StatusError(f"the gateway on {where} did not answer: {exc}") from None
    finally:
        conn.close()
    if response.status == 401:
        raise StatusError(f"the gateway on {where} refused the token in keys/ops.token "
                          "(another home's gateway on that port?)")
    try:
        data: dict[str, Any] = json.loads(answer) if response.status in (200, 400) else {}
    except ValueError:
        raise StatusError(f"the gateway on {where} answered something else than "
                          "JSON") from None
    if response.status == 400 and isinstance(data.get("error"), str):
        raise StatusError(f"the gateway refused it: {data['error']}")
    if response.status == 503:  # a standby of a pair (§12, JSON), or a stopping gateway
        raise StatusError(f"the gateway on {where} refused {method} {path}: {_why(answer)}")
    if response.status != 200 or not isinstance(data, dict):
        raise StatusError(f"the gateway on {where} answered HTTP {response.status} "
                          f"to {method} {path} (a gateway of another version?)")
    return data


def _why(answer: bytes) -> str:
    """The reason in a 503's body: its JSON ``error``, or its text."""
    try:
        error = json.loads(answer).get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else answer.decode("utf-8", "replace").strip()


def summary(s: dict[str, Any]) -> str:
    """A few lines for an operator's terminal."""
    g = s["gateway"]
    lines = [f"gateway {g['party']} {g['version']} on {g['listen'] or '(not listening)'}, "
             f"trade date {g['trade_date']}, up {_age(g['uptime_seconds'])}; "
             f"{'healthy' if s['health']['ok'] else 'UNHEALTHY: ' + s['health']['text']}; "
             + ("ready" if s["ready"]["ok"] else "NOT READY: " + "; ".join(s["ready"]["missing"]))]
    if g.get("store") == "postgresql":  # §12: one of a pair
        lines.append(f"role: {g['role']}" + (f" (lease epoch {g['lease_epoch']})"
                                             if g.get("lease_epoch") else ""))
    lines.append(f"sessions: {len(s['sessions'])}")
    for x in s["sessions"]:
        lines.append(f"  {x['party'] or '-':<10} {x['role'] or '-':<7} "
                     f"{'READY' if x['ready'] else x['state']:<15} since {x['since']}  "
                     f"key {x['key_id'] or '-'} age {_age(x['key_age_seconds'])}  "
                     f"in {x['messages_in']} out {x['messages_out']}")
    rev = s["reversals"]
    lines.append(f"in flight {s['inflight']}; reversals queued {rev['queued']} "
                 f"(oldest {_age(rev['oldest_seconds'])})")
    biz = s["business"]
    lines.append(f"business on {biz['trade_date']}:" + ("" if biz["rows"] else " none"))
    for b in biz["rows"]:
        lines.append(f"  {b['type']:<14} {b['party'] + '>' + b['counterparty']:<14} "
                     f"{b['direction']:<3} {b['status']:<10} "
                     f"{b['count']:>7} {b['amount']:>16}")
    if s["refusals"]:
        lines.append("refusals: " + ", ".join(f"{r['code']} sent {r['sent']} received "
                                              f"{r['received']}" for r in s["refusals"]))
    lines.append(suspensions_line(s))
    opened = s["alerts"]["open"]
    lines.append(f"open alerts: {len(opened) or 'none'}")
    for a in opened:
        lines.append(f"  {a['time']} {a['severity']} {a['kind']} {a['subject']}: {a['text']}")
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def suspensions_line(s: dict[str, Any]) -> str:
    """§11: what is suspended, one line ("suspended: none" when nothing)."""
    found = s.get("suspensions") or []
    if not found:
        return "suspended: none"
    return "SUSPENDED: " + "; ".join(
        ("every party" if x["every_party"] else x["party"]) + f" since {x['since']}"
        + (f" ({x['reason']})" if x["reason"] else "") for x in found)


def change_command(home: Path, action: str, party: str | None, reason: str | None,
                   as_json: bool) -> int:
    """``gateway suspend`` / ``gateway resume``: exit 0 done (or nothing to change), 1
    when the gateway could not be asked or refused it (one line on stderr)."""
    import sys

    try:
        answer = change_suspension(home, action, party, reason)
    except StatusError as exc:
        print(f"gateway {action}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(answer, ensure_ascii=False, indent=1))
    else:
        print(answer.get("text", ""))
        print(suspensions_line(answer))
    return 0
