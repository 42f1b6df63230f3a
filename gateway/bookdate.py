"""PROTOCOL §6 OTC booking date: same trading day inside trading hours, else next.

Trading hours are 09:30 inclusive to 15:00 exclusive, Asia/Shanghai, on a
business day (not a weekend, not a configured holiday).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

CHINA = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991
OPEN = dt.time(9, 30)
CLOSE = dt.time(15, 0)


class Calendar:
    """Business days: Monday–Friday except the configured holidays."""

    def __init__(self, holidays: Iterable[dt.date] = ()) -> None:
        self.holidays = frozenset(holidays)

    def is_business_day(self, day: dt.date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def next_business_day(self, day: dt.date) -> dt.date:
        """The first business day strictly after ``day``."""
        nxt = day + dt.timedelta(days=1)
        while not self.is_business_day(nxt):
            nxt += dt.timedelta(days=1)
        return nxt

    def book_date(self, confirmed_at: dt.datetime) -> dt.date:
        """Booking date for a bank confirmation at ``confirmed_at`` (tz-aware).

        To the letter of §6: outside 09:30–15:00 of a business day — before the
        open included — books on the next business day.
        """
        if confirmed_at.tzinfo is None:
            raise ValueError("confirmation time must carry a UTC offset")
        local = confirmed_at.astimezone(CHINA)
        day, clock = local.date(), local.time().replace(tzinfo=None)
        if self.is_business_day(day) and OPEN <= clock < CLOSE:
            return day
        return self.next_business_day(day)
