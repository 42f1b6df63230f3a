"""PROTOCOL §3 envelope line syntax."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.envelope import Envelope, join_payload, parse_envelope, split_payload


def test_envelope_round_trips_with_all_fields() -> None:
    env = Envelope("K0001", "HS256:abc=", "ES256:7f42fe44cc632bb8:MEQC")
    assert env.format() == b"SBDX1 K0001 HS256:abc= ES256:7f42fe44cc632bb8:MEQC"
    assert parse_envelope(env.format()) == env


def test_dashes_mean_absent() -> None:
    env = parse_envelope(b"SBDX1 - - -")
    assert env == Envelope(None, None, None)
    assert env.format() == b"SBDX1 - - -"


def test_split_keeps_the_exact_xml_bytes() -> None:
    xml = b"<?xml version='1.0'?>\n<Msg/>\n\n"
    env, rest = split_payload(join_payload(Envelope("K1", None, None), xml))
    assert env.key_id == "K1"
    assert rest == xml


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"SBDX2 - - -", "E100"),
        (b"SBDX1 - -", "E100"),
        (b"SBDX1  - - -", "E100"),
        (b"SBDX1 - - - -", "E100"),
        ("SBDX1 K\u00e9 - -".encode(), "E100"),
        (b"SBDX1 K_1 - -", "E201"),
        (b"SBDX1 K12345678901234567 - -", "E201"),
        (b"SBDX1 K1 MD5:abc -", "E200"),
        (b"SBDX1 K1 - ES256-nosigner", "E202"),
    ],
)
def test_bad_envelope_fields_map_to_codes(line: bytes, code: str) -> None:
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError) as info:
        parse_envelope(line)
    assert info.value.code == code


def test_payload_without_envelope_line_is_e100_and_keeps_the_session() -> None:
    from gateway.errors import MalformedEnvelope

    with pytest.raises(MalformedEnvelope) as info:
        split_payload(b"SBDX1 - - -<Msg/>")
    # the frame's length delimited it: the stream is still usable (only LEN errors close)
    assert info.value.code == "E100" and not info.value.closes_session


@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_raise_a_gateway_error(data: bytes) -> None:
    from gateway.errors import GatewayError

    try:
        split_payload(data)
    except GatewayError as exc:
        assert exc.code in {"E100", "E200", "E201", "E202"}
