"""PROTOCOL §10 ops endpoint: health, readiness, metrics, the operator page and its API.

``gateway serve`` answers HTTP on ``[ops] listen`` (twisted.web, in the reactor thread
that owns the journal):

- ``GET /healthz``: 200 while the reactor runs and the journal commits (the last
  flush succeeded, within ``[ops] healthz_flush_seconds``), else 503;
- ``GET /readyz``: 200 when the gateway listens (not draining) and every party of
  ``[ops] required_peers`` has a ready session, else 503 naming what is missing;
- ``GET /metrics``: the Prometheus text format (gateway/metrics.py);
- everything else needs ``Authorization: Bearer <keys/ops.token>`` (compared in
  constant time; a request without it gets 401 and a body that says nothing):
  ``GET /api/status`` (the page's data, JSON), ``GET /`` (the page), and
  ``POST /api/suspend`` / ``POST /api/resume`` (§11, gateway/suspension.py).  A browser
  cannot put a header on a navigation, so the page alone also takes the token as
  ``/?token=…``: it moves it to the tab's sessionStorage, takes it out of the address
  bar and sends it as the bearer header from then on (docs/operations.md).

The same readiness check raises and clears the ``peer_down`` alert (§10).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from . import __version__
from .alerts import CRITICAL, Alert
from .bookdate import CHINA
from .config import ConfigError, split_host_port
from .errors import RESULT_TEXT
from .givebacks import fen_text
from .metrics import CONTENT_TYPE, CommitWatch, EodReports, OpsMetrics
from .opsconfig import OpsConfig, read_token, seconds_setting
from .session import count_messages
from .suspension import SuspensionError, check_party, check_reason

log = logging.getLogger(__name__)

#: How often required peers are looked at for peer_down (the alert fires within 1 s of
#: ``peer_down_seconds``).
PEER_CHECK_SECONDS = 1.0
PUBLIC = (b"/healthz", b"/readyz", b"/metrics")
#: The POSTs of §11 (token needed, like /api/status).
CHANGES = (b"/api/suspend", b"/api/resume")
_HTML_401 = "text/html; charset=utf-8"


class OpsCannotListen(CannotListenError):
    """The ops port could not be bound: ``serve`` exits 1 with this one line."""

    def __str__(self) -> str:
        return f"[ops] listen: {super().__str__()}"


class Readiness:
    """Which required parties lack a ready session, since when; ``peer_down``."""

    def __init__(self, svc: Any, cfg: OpsConfig) -> None:
        self.svc = svc
        self.cfg = cfg
        now = svc.gateway.now()
        #: A required party is down from the start until it has a ready session.
        self.down_since: dict[str, float] = dict.fromkeys(cfg.required_peers, now)

    def restart(self) -> None:
        """Became active (§12): required parties count as down from now, not from
        while it stood by."""
        now = self.svc.gateway.now()
        self.down_since = dict.fromkeys(self.cfg.required_peers, now)

    def has_ready(self, party: str) -> bool:
        return any(s.ready and s.party == party for s in self.svc.gateway.sessions)

    def missing(self) -> list[str]:
        """What keeps the gateway from being ready, in words; empty when ready."""
        gw = self.svc.gateway
        out = []
        if not gw.accepts_logons:
            out.append(f"standby: another gateway of the pair is active (§12; role "
                       f"{gw.standing.name})")
        if self.svc.port is None or gw.draining:
            out.append("the gateway is not listening" + (" (draining)" if gw.draining else ""))
        out += [f"{party} has no ready session" for party in self.cfg.required_peers
                if not self.has_ready(party)]
        return out

    def check(self) -> None:
        """Every PEER_CHECK_SECONDS: raise peer_down for a party down long enough, clear
        it when the party is ready again."""
        gw, now, raised = self.svc.gateway, self.svc.gateway.now(), False
        if not gw.accepts_logons:  # a standby has no sessions by design: no peer_down
            self.restart()
            return
        for party in self.cfg.required_peers:
            if self.has_ready(party):
                self.down_since.pop(party, None)
                gw.alerts.clear("peer_down", party)
                continue
            since = self.down_since.setdefault(party, now)
            if now - since >= self.cfg.peer_down_seconds:
                raised |= gw.alerts.raise_state(
                    "peer_down", CRITICAL, party,
                    f"{party} has had no ready session since {_iso(since)} "
                    f"({now - since:.0f} s; [alerts] peer_down_seconds = "
                    f"{self.cfg.peer_down_seconds:g})") is not None
        if raised:
            self.svc.factory.schedule_flush()  # the alert's journal row


class OpsEndpoint:
    """The ops HTTP port of one GatewayService: started after the gateway's own port,
    stopped after its drain (before the journal closes)."""

    def __init__(self, svc: Any, cfg: OpsConfig) -> None:
        self.svc = svc
        self.cfg = cfg
        self.token = read_token(svc.keystore.keys_dir).encode("ascii")
        gateway = svc.gateway
        self.started_at = gateway.now()
        self.eod = EodReports(cfg.eod_dirs) if cfg.eod_dirs else None
        self.metrics = OpsMetrics(gateway, self.eod, gateway.now, cfg.business_cache_seconds)
        count_messages(gateway, self.metrics.messages.count)
        gateway.on_round_trip = self.metrics.relay_seconds.observe
        self.commits = CommitWatch(gateway, self.metrics.commit_seconds,
                                   self.metrics.commit_frames, gateway.now)
        self.readiness = Readiness(svc, cfg)
        svc.alerts_reload_hooks.append(self.reload_alerts)
        self._checks = task.LoopingCall(self._check)
        self._checks.clock = svc.reactor
        self.port: Any = None
        self.closed = False
        #: POSTs of §11 waiting for their commit: how to refuse each (§12: stood by).
        self.pending_changes: dict[int, Callable[[], None]] = {}

    def reload_alerts(self, table: dict[str, Any]) -> None:
        """SIGHUP: ``[alerts] peer_down_seconds`` as the reloaded table says (its other
        keys are the alert rules'); a bad value keeps the one in use."""
        try:
            cfg = replace(self.cfg, peer_down_seconds=seconds_setting(
                "alerts", "peer_down_seconds", table.get("peer_down_seconds", 60.0)))
        except ConfigError as exc:
            log.error("SIGHUP: %s; peer_down_seconds stays %g", exc, self.cfg.peer_down_seconds)
            return
        self.cfg = self.readiness.cfg = cfg

    def _check(self) -> None:
        try:
            self.readiness.check()
        except Exception:  # a bug: say so, keep looking every second
            log.exception("checking the required peers failed")

    @property
    def address(self) -> str:
        host = self.port.getHost()
        return f"{host.host}:{host.port}"

    def start(self) -> None:
        """Listen; a CannotListenError goes up (``serve`` exits 1 with one line)."""
        host, port = split_host_port(self.cfg.listen)
        site = Site(OpsResource(self), timeout=60)  # type: ignore[no-untyped-call]
        site.displayTracebacks = False  # a bug's traceback goes to the log, not to a client
        site.noisy = False
        try:
            self.port = self.svc.reactor.listenTCP(port, site, interface=host)
        except CannotListenError as exc:
            raise OpsCannotListen(  # type: ignore[no-untyped-call]
                exc.interface, exc.port, exc.socketError) from None
        self._checks.start(PEER_CHECK_SECONDS, now=False)
        log.info("ops HTTP on %s (/healthz /readyz /metrics; / and /api/status need the "
                 "token in keys/ops.token)%s", self.address,
                 f"; required peers {', '.join(self.cfg.required_peers)}"
                 if self.cfg.required_peers else "")

    def stop(self) -> defer.Deferred[Any]:
        """Stop listening; requests on open connections get 503 from now on."""
        self.closed = True
        if self._checks.running:
            self._checks.stop()
        if self.port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(self.port.stopListening)

    def stood_by(self) -> None:
        """§12: this gateway is not the active one any more; the changes waiting for a
        commit will never have one (a fenced commit, or the turn dropped): each gets
        503 now instead of an answer that never comes."""
        for refuse in list(self.pending_changes.values()):
            refuse()  # each takes itself out

    # --- checks ---------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        ago = self.svc.gateway.now() - self.commits.last_ok
        if self.commits.failed:
            return False, "a journal flush failed"
        if ago > self.cfg.healthz_flush_seconds:
            return False, f"no journal flush succeeded for {ago:.0f} s"
        stats = self.svc.gateway.journal.commit_stats
        return True, (f"ok: last journal flush {ago:.1f} s ago; {stats.commits} commits, "
                      f"max {stats.max_seconds * 1e3:.1f} ms")

    def authorized(self, request: Any, allow_query: bool) -> bool:
        presented = b""
        header = request.getHeader(b"authorization")
        if header is not None and header[:7].lower() == b"bearer ":
            presented = header[7:].strip()
        elif allow_query:
            presented = (request.args or {}).get(b"token", [b""])[0]
        return hmac.compare_digest(presented, self.token)

    # --- the page's data --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        gw = self.svc.gateway
        now = gw.now()
        healthy, health = self.health()
        missing = self.readiness.missing()
        data: dict[str, Any] = {
            "gateway": {"party": gw.config.party, "version": __version__, "time": _iso(now),
                        "trade_date": gw.trade_date(), "started": _iso(self.started_at),
                        "uptime_seconds": round(now - self.started_at, 1),
                        "listen": self._listening(), "tls": bool(self.svc.tls),
                        "draining": bool(gw.draining), "role": gw.standing.name,
                        "lease_epoch": gw.standing.epoch,
                        "store": "postgresql" if gw.standing.lease else "sqlite"},
            "health": {"ok": healthy, "text": health},
            "ready": {"ok": not missing, "missing": missing,
                      "required_peers": list(self.cfg.required_peers)},
            "sessions": [self._session(s, now) for s in list(gw.sessions)],
            "inflight": len(gw.pending),
            "business": self._business(),
            "reversals": dict(zip(("queued", "oldest_seconds"),
                                  gw.journal.reversal_backlog(now), strict=True)),
            "refusals": [{"code": code, "text": RESULT_TEXT.get(code, ""), "sent": out,
                          "received": inn}
                         for code, out, inn in self.metrics.messages.refusals()],
            "alerts": {"open": [_alert(a) for a in gw.alerts.open.values()],
                       "recent": [_alert(a) for a in gw.alerts.recent(20)]},
            "suspensions": [x.as_dict() for x in gw.suspensions.current()],
            "suspended_parties": gw.suspensions.suspended_parties(
                p.party for p in gw.keystore.peers()),
        }
        if self.eod is not None:
            data["eod"] = [r.as_dict() for r in self.eod.results()[:20]]
        return data

    def _listening(self) -> str | None:
        port = self.svc.port
        if port is None:
            return None
        host = port.getHost()
        return f"{host.host}:{host.port}"

    @staticmethod
    def _session(s: Any, now: float) -> dict[str, Any]:
        keys = s.keyring.current
        installed = s.keyring.installed_at
        return {"party": s.party, "role": s.peer.role if s.peer else None,
                "session": s.session_id, "state": s.state, "ready": bool(s.ready),
                "since": _iso(s.opened_at), "key_id": keys.key_id if keys else None,
                "key_age_seconds": round(now - installed, 1) if installed else None,
                "messages_in": s.messages_in, "messages_out": s.messages_out,
                "inflight": s.inflight}

    def _business(self) -> dict[str, Any]:
        rows = self.metrics.business.rows()
        return {"trade_date": self.svc.gateway.trade_date(),
                "rows": [{"type": t, "direction": d, "status": s, "party": o,
                          "counterparty": r, "count": n, "amount": fen_text(fen)}
                         for t, d, s, o, r, n, fen in rows]}


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, CHINA).isoformat(timespec="seconds")


def _alert(a: Alert) -> dict[str, Any]:
    return {"kind": a.kind, "severity": a.severity, "subject": a.subject,
            "time": _iso(a.at), "text": a.text}


# --- HTTP ----------------------------------------------------------------------------
def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class _Page:
    """An HTML file of the package with its inline script and style, and the
    Content-Security-Policy that allows exactly those (no external resource at all)."""

    def __init__(self, name: str) -> None:
        self.html = (Path(__file__).parent / name).read_text("utf-8")
        inline = re.findall(r"<(script|style)>(.*?)</\1>", self.html, re.S)
        scripts = " ".join(_csp_hash(body) for tag, body in inline if tag == "script")
        styles = " ".join(_csp_hash(body) for tag, body in inline if tag == "style")
        self.policy = (f"default-src 'none'; script-src {scripts}; style-src {styles}; "
                       "connect-src 'self'; img-src data:; base-uri 'none'; "
                       "form-action 'self'; frame-ancestors 'none'").encode()

    def render(self, refresh_seconds: float) -> bytes:
        return self.html.replace("{{refresh_seconds}}", f"{refresh_seconds:g}").encode()


PAGE = _Page("ops_page.html")
LOGIN = _Page("ops_login.html")


class OpsResource(Resource):
    """Every path of the ops port, in one place: the public checks first, then the
    token, then the rest (a request without the token learns nothing, not even
    whether a path exists)."""

    isLeaf = True

    def __init__(self, endpoint: OpsEndpoint) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.endpoint = endpoint

    def render(self, request: Any) -> bytes | int:
        """The body, or NOT_DONE_YET (a POST of §11: answered after the commit)."""
        request.setHeader(b"server", b"sbdx-gateway")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if self.endpoint.closed:
            return _text(request, 503, "the gateway is stopping\n")
        method, path = request.method, request.path
        if method in (b"GET", b"HEAD") and path in PUBLIC:
            return self._public(request, path)
        if not self.endpoint.authorized(request, allow_query=path == b"/" and
                                        method in (b"GET", b"HEAD")):
            return self._unauthorized(request, path == b"/" and method == b"GET")
        if path in CHANGES:
            if method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _text(request, 405, "method not allowed\n")
            return self._change(request, path)
        if method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _text(request, 405, "method not allowed\n")
        if path == b"/api/status":
            body = json.dumps(self.endpoint.status(), ensure_ascii=False, indent=1)
            return _send(request, 200, "application/json; charset=utf-8", body.encode())
        if path == b"/":
            request.setHeader(b"content-security-policy", PAGE.policy)
            request.setHeader(b"x-frame-options", b"DENY")
            return _send(request, 200, "text/html; charset=utf-8",
                         PAGE.render(self.endpoint.cfg.page_refresh_seconds))
        return _text(request, 404, "not found\n")

    def _change(self, request: Any, path: bytes) -> bytes | int:
        """``POST /api/suspend`` or ``/api/resume`` (§11): a JSON body with optional
        ``party`` and (suspend) ``reason``; the answer, JSON with the suspensions after
        the change, is sent once the change is committed to the journal."""
        gw = self.endpoint.svc.gateway
        if not gw.accepts_logons:  # §12: a standby changes nothing in the shared journal
            return _send(request, 503, "application/json; charset=utf-8",
                         json.dumps({"error": STANDBY}).encode())
        try:
            fields = _json_body(request)
            party = check_party(fields.get("party"))
            if path == b"/api/suspend":
                change = gw.suspensions.suspend(party, check_reason(fields.get("reason")))
            else:
                if "reason" in fields:
                    raise SuspensionError("resume takes no reason")
                change = gw.suspensions.resume(party)
        except SuspensionError as exc:
            return _send(request, 400, "application/json; charset=utf-8",
                         json.dumps({"error": str(exc)}).encode())
        body = json.dumps(change.as_dict(), ensure_ascii=False, indent=1).encode()
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)  # the client hung up meanwhile

        pending, key = self.endpoint.pending_changes, id(request)

        def answer(code: int, answer_body: bytes) -> None:
            if pending.pop(key, None) is not None and not gone:
                request.write(_send(request, code, "application/json; charset=utf-8",
                                    answer_body))
                request.finish()

        pending[key] = lambda: answer(503, json.dumps(
            {"error": STANDBY + " (this change was not committed)"}).encode())
        gw.journal.after_commit(lambda: answer(200, body))
        self.endpoint.svc.factory.schedule_flush()
        return int(NOT_DONE_YET)

    def _public(self, request: Any, path: bytes) -> bytes:
        ep = self.endpoint
        if path == b"/metrics":
            return _send(request, 200, CONTENT_TYPE, ep.metrics.render())
        if path == b"/healthz":
            ok, text = ep.health()
            return _text(request, 200 if ok else 503, text + "\n")
        missing = ep.readiness.missing()
        if missing:
            return _text(request, 503, "not ready: " + "; ".join(missing) + "\n")
        return _text(request, 200, "ready\n")

    @staticmethod
    def _unauthorized(request: Any, page: bool) -> bytes:
        """401 with nothing in it but how to authenticate; a browser asking for the page
        gets a form for the token (static: the same for everyone)."""
        request.setHeader(b"www-authenticate", b'Bearer realm="sbdx-ops"')
        if page:
            request.setHeader(b"content-security-policy", LOGIN.policy)
            request.setHeader(b"x-frame-options", b"DENY")
            return _send(request, 401, _HTML_401, LOGIN.render(0))
        return _text(request, 401, "unauthorized\n")


#: The answer (503) to a suspend/resume at a gateway that is not the active one (§12).
STANDBY = ("this gateway is a standby of an active/standby pair (PROTOCOL §12): nothing was "
           "changed; send it to the active gateway (`gateway status` on each home shows "
           "the role)")

#: Largest body of a POST of the ops API.
MAX_BODY = 4096


def _json_body(request: Any) -> dict[str, Any]:
    """The request's JSON object (an empty body: no fields), else SuspensionError."""
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise SuspensionError(f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise SuspensionError('the body must be a JSON object, e.g. {"party": "CCB", '
                              '"reason": "..."}') from None
    if not isinstance(data, dict):
        raise SuspensionError("the body must be a JSON object")
    unknown = sorted(set(data) - {"party", "reason"})
    if unknown:
        raise SuspensionError(f"unknown field(s): {', '.join(unknown)}; "
                              "known: party, reason")
    return data


def _text(request: Any, code: int, text: str) -> bytes:
    return _send(request, code, "text/plain; charset=utf-8", text.encode())


def _send(request: Any, code: int, content_type: str, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type.encode())
    return body
