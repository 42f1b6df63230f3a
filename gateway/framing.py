"""PROTOCOL §2 framing: ``LEN payload`` with LEN = 8 ASCII decimal digits.

:class:`FrameDecoder` is a sans-IO buffer: feed it byte chunks of any size and
it returns the complete payloads, in order.  It never holds more than one
frame's worth of bytes beyond what it has already returned (max payload + 8).
"""
from __future__ import annotations

from .errors import FrameTooLarge, MalformedFrame

LEN_DIGITS = 8
#: Default max payload: 1 MiB (§2), configurable as ``max_frame_bytes``.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
_DIGITS = frozenset(b"0123456789")


def encode_frame(payload: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Prefix ``payload`` with its 8-digit length."""
    if len(payload) > max_payload:
        raise FrameTooLarge(f"payload of {len(payload)} bytes exceeds {max_payload}")
    return b"%08d" % len(payload) + payload


def parse_length(header: bytes, max_payload: int) -> int:
    """Read an 8-byte LEN header, raising E100 (not digits) or E101 (too large)."""
    if len(header) != LEN_DIGITS or not _DIGITS.issuperset(header):
        raise MalformedFrame(f"length header {header[:LEN_DIGITS]!r} is not 8 ASCII digits")
    length = int(header)
    if length > max_payload:
        raise FrameTooLarge(f"declared length {length} exceeds max {max_payload}")
    return length


class FrameDecoder:
    """Incremental frame decoder.

    After it raises, the stream is unusable (the length of what follows is
    unknown) and the caller must close the connection; further feeds raise
    the same error again.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._need: int | None = None  # payload length of the frame in progress
        self._failed: Exception | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every payload it completes."""
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        frames: list[bytes] = []
        try:
            while True:
                payload = self._next()
                if payload is None:
                    return frames
                frames.append(payload)
        except (MalformedFrame, FrameTooLarge) as exc:
            self._failed = exc
            self._buffer.clear()
            if frames:
                # Hand back the good frames first; the error surfaces next feed.
                return frames
            raise

    def _next(self) -> bytes | None:
        buf = self._buffer
        if self._need is None:
            if len(buf) < LEN_DIGITS:
                # Reject garbage as soon as it is visible, not after 8 bytes.
                if not _DIGITS.issuperset(buf):
                    raise MalformedFrame(f"length header {bytes(buf)!r} is not 8 ASCII digits")
                return None
            self._need = parse_length(bytes(buf[:LEN_DIGITS]), self.max_payload)
            del buf[:LEN_DIGITS]
        if len(buf) < self._need:
            return None
        payload = bytes(buf[: self._need])
        del buf[: self._need]
        self._need = None
        return payload

    def check_pending(self) -> None:
        """Raise the deferred error, if a previous feed hit one after good frames."""
        if self._failed is not None:
            raise self._failed
