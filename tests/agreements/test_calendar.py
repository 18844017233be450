"""Reply deadlines on the official Chinese calendar (国务院令第809号: 10 working days).

The 2026 dates are those of the State Council's arrangement as chinese-calendar 1.11.0 carries
it: National Day 10-01..10-07 off with Sunday 09-20 and Saturday 10-10 worked; Mid-Autumn
09-25..09-27 off; Spring Festival 02-15..02-23 off with Saturdays 02-14 and 02-28 worked.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import chinese_calendar  # type: ignore[import-untyped]
import pytest

from qiao.agreements.calendar import (
    cst_day,
    end_of_day,
    is_working_day,
    reply_deadline,
    working_days_left,
)
from qiao.agreements.document import CST


def cst(y: int, m: int, d: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(y, m, d, hour, minute, tzinfo=CST)


def end(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, 23, 59, 59, 999_999, tzinfo=CST)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 9, 20), True),  # Sunday, worked for National Day
        (date(2026, 9, 25), False),  # Friday, Mid-Autumn Festival
        (date(2026, 9, 28), True),  # an ordinary Monday
        *[(date(2026, 10, d), False) for d in range(1, 8)],  # National Day week
        (date(2026, 10, 8), True),
        (date(2026, 10, 10), True),  # Saturday, worked
        (date(2026, 10, 11), False),  # Sunday
        (date(2026, 2, 14), True),  # Saturday, worked for Spring Festival
        *[(date(2026, 2, d), False) for d in range(15, 24)],  # Spring Festival
        (date(2026, 2, 24), True),
        (date(2026, 2, 28), True),  # Saturday, worked
        (date(2026, 1, 1), False),  # New Year's Day
    ],
)
def test_working_days_of_2026_follow_the_official_arrangement(day: date, working: bool) -> None:
    assert is_working_day(day) == (working, True)
    assert chinese_calendar.is_workday(day) is working  # the package's own data agrees


@pytest.mark.parametrize(
    ("day", "working"),
    [(date(2027, 1, 1), True), (date(2027, 1, 2), False), (date(2027, 1, 4), True)],
)
def test_an_unpublished_year_falls_back_to_monday_to_friday(day: date, working: bool) -> None:
    assert is_working_day(day) == (working, False)


def test_deadline_across_national_day() -> None:
    # Tuesday 09-29: 09-30, then 10-08, 10-09, 10-10 (Sat, worked), 10-12..16, 10-19.
    assert reply_deadline(cst(2026, 9, 29, 10, 0)) == (end(2026, 10, 19), True)


def test_deadline_across_spring_festival() -> None:
    # Thursday 02-12: 02-13, 02-14 (Sat, worked), 02-24..28 (Sat 02-28 worked), 03-02..04.
    deadline, official = reply_deadline(cst(2026, 2, 12, 15, 0))
    assert (deadline, official) == (end(2026, 3, 4), True)
    counted = chinese_calendar.get_workdays(date(2026, 2, 13), date(2026, 3, 4))
    assert len(counted) == 10


def test_deadline_in_an_ordinary_fortnight() -> None:
    # Wednesday 11-18: ten weekdays from Thursday 11-19 end on Wednesday 12-02.
    assert reply_deadline(cst(2026, 11, 18, 9, 0)) == (end(2026, 12, 2), True)
    assert reply_deadline(cst(2026, 11, 18, 9, 0), working_days=1) == (end(2026, 11, 19), True)


def test_submission_on_a_holiday_counts_from_the_next_day() -> None:
    # Saturday 10-03: 10-08 is the first working day.
    assert reply_deadline(cst(2026, 10, 3, 12, 0), working_days=1) == (end(2026, 10, 8), True)


def test_deadline_ending_within_2026_is_official() -> None:
    assert reply_deadline(cst(2026, 12, 16, 9, 0)) == (end(2026, 12, 30), True)


def test_deadline_running_into_2027_is_provisional() -> None:
    # Thursday 12-24: 12-25, 12-28..31, then 2027 on weekdays only: 01-01, 01-04..07.
    assert reply_deadline(cst(2026, 12, 24, 9, 0)) == (end(2027, 1, 7), False)


def test_days_are_cst_days_not_utc_days() -> None:
    # 15:59:59 UTC is 23:59:59 CST on 09-29; 16:30 UTC is already 00:30 on 09-30 in CST.
    before = datetime(2026, 9, 29, 15, 59, 59, tzinfo=UTC)
    after = datetime(2026, 9, 29, 16, 30, tzinfo=UTC)
    assert reply_deadline(before)[0] == end(2026, 10, 19)
    assert reply_deadline(after)[0] == end(2026, 10, 20)
    assert cst_day(after) == date(2026, 9, 30)
    assert cst_day(datetime(2026, 9, 30, 0, 30)) == date(2026, 9, 30)  # naive: CST


def test_deadline_is_the_last_instant_of_its_day_in_cst() -> None:
    deadline, _ = reply_deadline(cst(2026, 9, 29, 10, 0))
    assert deadline.utcoffset() == timedelta(hours=8)
    assert deadline + timedelta(microseconds=1) == cst(2026, 10, 20, 0, 0)
    assert end_of_day(date(2026, 10, 19)) == deadline


def test_a_deadline_needs_a_working_day() -> None:
    with pytest.raises(ValueError, match="at least one working day"):
        reply_deadline(cst(2026, 9, 29, 10, 0), working_days=0)


DEADLINE = end(2026, 10, 19)  # of a request submitted on 09-29


@pytest.mark.parametrize(
    ("now", "left"),
    [
        (cst(2026, 9, 29, 10, 0), 10),  # at submission
        (cst(2026, 10, 2, 10, 0), 9),  # a holiday: 10-08 … 10-19
        (cst(2026, 10, 16, 10, 0), 1),  # Friday: only Monday 10-19 is left
        (cst(2026, 10, 19, 0, 0), 0),  # the deadline day: due by its end
        (DEADLINE, 0),  # the deadline day's end
        (cst(2026, 10, 20, 0, 0), -1),  # overdue by a working day
        (cst(2026, 10, 24, 10, 0), -4),  # Saturday: 10-20..23 have passed
    ],
)
def test_working_days_left(now: datetime, left: int) -> None:
    assert working_days_left(DEADLINE, now) == left


def test_overdue_over_a_weekend_is_never_zero() -> None:
    friday = end(2026, 10, 16)
    assert working_days_left(friday, cst(2026, 10, 17, 9, 0)) == -1


def test_working_days_left_near_midnight_cst_vs_utc() -> None:
    assert working_days_left(DEADLINE, datetime(2026, 10, 19, 15, 59, tzinfo=UTC)) == 0
    assert working_days_left(DEADLINE, datetime(2026, 10, 19, 16, 30, tzinfo=UTC)) == -1
    # 10-15 20:00 UTC is 10-16 04:00 CST: Friday, one working day left.
    assert working_days_left(DEADLINE, datetime(2026, 10, 15, 20, 0, tzinfo=UTC)) == 1
