"""PROTOCOL §6 OTC booking date around the trading-hours edges."""
from __future__ import annotations

import datetime as dt

import pytest

from gateway.bookdate import CHINA, Calendar

WED = dt.date(2026, 11, 25)  # a Wednesday
THU, FRI, MON = dt.date(2026, 11, 26), dt.date(2026, 11, 27), dt.date(2026, 11, 30)


def at(day: dt.date, h: int, m: int, s: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, h, m, s, tzinfo=CHINA)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(WED, 9, 29, 59), THU),  # before the open: next business day (§6, to the letter)
        (at(WED, 9, 30, 0), WED),  # 09:30 inclusive
        (at(WED, 14, 59, 59), WED),
        (at(WED, 15, 0, 0), THU),  # 15:00 exclusive
        (at(FRI, 14, 0), FRI),
        (at(FRI, 18, 0), MON),  # Friday evening -> Monday
        (at(dt.date(2026, 11, 28), 10, 0), MON),  # Saturday in "hours" is not trading
    ],
)
def test_book_date_at_the_edges(when: dt.datetime, expected: dt.date) -> None:
    assert Calendar().book_date(when) == expected


def test_configured_holiday_is_skipped() -> None:
    cal = Calendar(holidays=[THU])
    assert cal.book_date(at(WED, 15, 0)) == FRI
    assert cal.book_date(at(THU, 10, 0)) == FRI


def test_time_in_another_offset_is_converted_to_shanghai() -> None:
    utc = dt.datetime(2026, 11, 25, 1, 30, tzinfo=dt.UTC)  # 09:30 in Shanghai
    assert Calendar().book_date(utc) == WED
    assert Calendar().book_date(utc - dt.timedelta(seconds=1)) == THU


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        Calendar().book_date(dt.datetime(2026, 11, 25, 10, 0))
