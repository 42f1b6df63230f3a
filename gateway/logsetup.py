"""How every gateway process logs (docs/operations.md, "Logs").

One stream, stderr, for the gateway's own records (stdlib :mod:`logging`) and for
Twisted's events (:mod:`twisted.logger`, bridged here), in one of two formats:

- ``text``: ``2026-12-02T10:15:30.123+08:00 INFO gateway.server: text``, one event a
  line (a traceback follows its line);
- ``json``: one object a line, ``{"time", "level", "logger", "message"}`` and
  ``"exception"`` when there is a traceback.

Times are Asia/Shanghai (+08:00), the protocol's business time (message ``Time``, the
trade date), whatever the host's time zone: a log line and the message it speaks of
read the same clock.  Addresses are written ``host:port`` (``[::1]:7700`` for IPv6).

Twisted's ClientService says nothing of a dial-out that fails but an info line without
the reason; :class:`DialOut` is its retry policy and says, in one line per failed
attempt, whom it dialled, why that failed and when it dials again.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.application import internet
from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from .bookdate import CHINA

#: The values of ``gateway --log-format``.
LOG_FORMATS = ("text", "json")
#: Twisted's ClientService logs "Scheduling retry …" at info, without the reason;
#: :class:`DialOut` says it better, so only its warnings and errors get through.
CLIENT_SERVICE_LOGGER = "twisted.application._client_service"
_HANDLER_NAME = "gateway"
_LEVELS: dict[Any, int] = {
    LogLevel.debug: logging.DEBUG, LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING, LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO-8601 in Asia/Shanghai, to the millisecond."""
    return dt.datetime.fromtimestamp(seconds, CHINA).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``."""

    def format(self, record: logging.LogRecord) -> str:
        text = (f"{iso_time(record.created)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line (ASCII: any pipe or log shipper reads it)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, str] = {"time": iso_time(record.created), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event)


def configure(log_format: str = "text", level: int = logging.INFO,
              stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (stderr) in ``log_format``, Twisted's events included.  Called
    again, it replaces its own handler (and nobody else's)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(CLIENT_SERVICE_LOGGER).setLevel(max(level, logging.WARNING))
    _bridge_twisted()


@implementer(ILogObserver)
class TwistedBridge:
    """Twisted's log events as stdlib records of the logger named by their namespace
    (``twisted.…``; the legacy ``log.msg`` ones as ``twisted``), a failure with its
    traceback: they meet the same handler and format as the gateway's own."""

    def __call__(self, event: LogEvent) -> None:
        level = _LEVELS.get(event.get("log_level"), logging.INFO)
        namespace = str(event.get("log_namespace") or "")
        logger = logging.getLogger(namespace if namespace.startswith("twisted")
                                   else "twisted")
        if not logger.isEnabledFor(level):
            return
        failure = event.get("log_failure")
        exc_info = None
        if isinstance(failure, Failure):
            exc_info = (failure.type, failure.value,
                        failure.getTracebackObject())  # type: ignore[no-untyped-call]
        logger.log(level, "%s", formatEvent(event), exc_info=exc_info)  # type: ignore[arg-type]


_bridged = False


def _bridge_twisted() -> None:
    """Begin Twisted's logging, once per process, to :class:`TwistedBridge` (what it
    buffered before is replayed); stdout and stderr are left alone."""
    global _bridged
    if not _bridged:
        globalLogBeginner.beginLoggingTo([TwistedBridge()], redirectStandardIO=False)
        _bridged = True


# --- addresses ----------------------------------------------------------------------
def join_host_port(host: str, port: int) -> str:
    """``host:port``; an IPv6 host in brackets (``[::1]:7700``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_port(address: Any) -> str:
    """A Twisted address (IPv4Address, IPv6Address) as ``host:port``; anything else as
    its text."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return join_host_port(str(host), int(port))


def connection_end(reason: Any) -> str:
    """Why a connection was lost, in a few words (``reason``: a Failure or exception)."""
    exc = getattr(reason, "value", reason)
    if isinstance(exc, error.ConnectionDone):
        return "the peer closed the connection"
    if isinstance(exc, error.ConnectionAborted):
        return "the connection was aborted"
    if isinstance(exc, error.ConnectionLost):
        return "the connection was lost (not closed cleanly: a reset, or the network)"
    text = str(exc).strip().rstrip(".")
    return f"the connection was lost: {text}" if text else "the connection was lost"


def connect_failure(exc: BaseException) -> str:
    """Why a connect failed, in a few words."""
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused (nothing listens there?)"
    if isinstance(exc, (error.TimeoutError, error.TCPTimedOutError)):
        return "no answer (timed out: host down, or a firewall drops it?)"
    if isinstance(exc, error.DNSLookupError):
        return "host name not found"
    if isinstance(exc, error.NoRouteError):
        return "no route to host"
    return str(exc).strip().rstrip(".") or type(exc).__name__


# --- dial-outs ------------------------------------------------------------------------
class DialOut:
    """A ClientService's ``retryPolicy`` that logs its dial-out.

    ``wrap`` the endpoint with it: the wrapper notes why a connect failed (and says
    ``dialling WHOM at ADDRESS`` before the first attempt, if ``announce``); then
    ClientService asks this policy for the wait, and the policy logs one line: a
    failed connect as a warning with the reason, the wait and the attempt number, a
    connection that ended as info with the wait.  :meth:`failed` notes a failure after
    the connect (a TLS handshake or a logon refused) the same way."""

    def __init__(self, whom: str, address: str, logger: logging.Logger, *,
                 prefix: str = "", announce: bool = True,
                 policy: Callable[[int], float] | None = None) -> None:
        self.whom, self.address, self.prefix = whom, address, prefix
        self._log = logger
        self._announce = announce
        self._policy = policy or internet.backoffPolicy()
        #: What failed (and why) since the last retry; whether it was a connect.
        self._failure: tuple[str, bool] | None = None

    def wrap(self, endpoint: Any) -> Any:
        return _NotingEndpoint(endpoint, self)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after ``attempt`` failed attempts in a row."""
        return float(self._policy(attempt))

    def failed(self, what: str) -> None:
        """Note a failure after the connect (``what`` failed, and why)."""
        self._failure = (what, False)

    def connecting(self) -> None:
        if self._announce:
            self._announce = False
            self._log.info("%sdialling %s at %s", self.prefix, self.whom, self.address)

    def connect_failed(self, failure: Failure) -> Failure:
        if not isinstance(failure.value, defer.CancelledError):  # stopped: no retry
            self._failure = (f"dialling {self.whom} at {self.address} failed: "
                             f"{connect_failure(failure.value)}", True)  # type: ignore[arg-type]
        return failure

    def __call__(self, attempt: int) -> float:
        wait = self.delay(attempt)
        failure, self._failure = self._failure, None
        if failure is None:
            self._log.info("%sconnection to %s at %s ended; dialling again in %.1f s",
                           self.prefix, self.whom, self.address, wait)
        else:
            what, connect = failure
            self._log.warning("%s%s; dialling again in %.1f s%s", self.prefix, what, wait,
                              f" (attempt {attempt})" if connect else "")
        return wait


@implementer(IStreamClientEndpoint)
class _NotingEndpoint:
    """An endpoint whose failed connects are noted by a :class:`DialOut`."""

    def __init__(self, endpoint: Any, dial: DialOut) -> None:
        self._endpoint = endpoint
        self._dial = dial

    def connect(self, factory: Any) -> Any:
        self._dial.connecting()
        return self._endpoint.connect(factory).addErrback(self._dial.connect_failed)
