"""PROTOCOL §2 framing: round trips under arbitrary chunking, E100/E101."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import FrameTooLarge, MalformedFrame
from gateway.framing import FrameDecoder, encode_frame


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_frames_round_trip_under_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(max_payload=1000)
    out: list[bytes] = []
    for piece in chunked(stream, cuts):
        out.extend(decoder.feed(piece))
    assert out == payloads
    assert decoder.buffered == 0


def test_several_frames_in_one_read_and_one_split_across_reads() -> None:
    decoder = FrameDecoder()
    data = encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"three")
    assert decoder.feed(data[:20]) == [b"one"]
    assert decoder.feed(data[20:]) == [b"two", b"three"]


def test_length_header_is_eight_zero_padded_digits() -> None:
    assert encode_frame(b"abc") == b"00000003abc"
    assert encode_frame(b"") == b"00000000"


@pytest.mark.parametrize("header", [b"0000001x", b"-0000001", b" 0000003", b"+0000003", b"abcdefgh"])
def test_non_digit_length_is_e100(header: bytes) -> None:
    with pytest.raises(MalformedFrame) as info:
        FrameDecoder().feed(header + b"abc")
    assert info.value.code == "E100"


def test_garbage_is_refused_before_eight_bytes_arrive() -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(b"GET")


def test_length_above_max_is_e101_without_waiting_for_the_payload() -> None:
    decoder = FrameDecoder(max_payload=1024)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(b"00001025")
    assert info.value.code == "E101"
    assert decoder.buffered == 0


def test_huge_declared_length_is_e101() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"99999999")


def test_max_payload_itself_is_accepted() -> None:
    decoder = FrameDecoder(max_payload=16)
    assert decoder.feed(encode_frame(b"x" * 16)) == [b"x" * 16]


def test_good_frames_before_a_bad_header_are_returned_then_the_error() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"ok") + b"zzzzzzzz") == [b"ok"]
    with pytest.raises(MalformedFrame):
        decoder.check_pending()
    with pytest.raises(MalformedFrame):
        decoder.feed(encode_frame(b"after"))


def test_encoder_refuses_oversize_payload() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 17, max_payload=16)
