"""Reply deadlines in working days on the official Chinese calendar.

国务院令第809号《政务数据共享条例》 gives the owner of a conditional resource 10 working days
to answer a sharing request. Working days follow the State Council's yearly holiday
arrangement (国务院办公厅关于部分节假日安排的通知): official holidays are off, and some
weekend days are adjusted working days (调休上班). The arrangement for the next year is
published each November; ``chinese_calendar`` carries the published years. For a year it does
not know, Monday to Friday counts, and the result says it is provisional.

All days are days in China Standard Time (UTC+8), whatever the offset of the time given.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import chinese_calendar  # type: ignore[import-untyped]  # the package ships no types

from qiao.agreements.document import CST

_END_OF_DAY = time(23, 59, 59, 999_999)


def is_working_day(day: date) -> tuple[bool, bool]:
    """(whether ``day`` is a working day, whether the official calendar knows its year)."""
    try:
        return bool(chinese_calendar.is_workday(day)), True
    except NotImplementedError:
        # A year without a published arrangement: the ordinary week until it is published.
        return day.weekday() < 5, False


def cst_day(when: datetime) -> date:
    """The calendar day ``when`` falls on in China Standard Time (a naive time counts as CST)."""
    if when.tzinfo is None:
        return when.date()
    return when.astimezone(CST).date()


def end_of_day(day: date) -> datetime:
    """The last instant (23:59:59.999999 CST) of ``day``."""
    return datetime.combine(day, _END_OF_DAY, CST)


def reply_deadline(submitted: datetime, working_days: int = 10) -> tuple[datetime, bool]:
    """The end (23:59:59.999999 CST) of the ``working_days``-th working day after the day
    ``submitted`` falls on (CST); and True when the official calendar knew every year counted
    (False: weekends only for a year not yet published — the deadline is provisional)."""
    if working_days < 1:
        raise ValueError("a reply deadline is at least one working day")
    day = cst_day(submitted)
    official = True
    counted = 0
    # The day of submission does not count (the period starts the next day, as deadlines in
    # administrative procedure do), whether or not it is a working day.
    while counted < working_days:
        day += timedelta(days=1)
        working, known = is_working_day(day)
        official = official and known
        counted += working
    return end_of_day(day), official


def working_days_left(deadline: datetime, now: datetime) -> int:
    """Working days from ``now``'s day (CST) to the deadline's day, inclusive of the deadline
    day, 0 on the deadline day's end, negative when overdue.

    The days counted are those after today, up to and including the deadline day: 0 on the
    deadline day itself; once the deadline has passed, minus the working days since it (at
    least -1, so an overdue request never shows 0 over a weekend)."""
    today, last = cst_day(now), cst_day(deadline)
    if now > deadline:
        # Overdue: minus the working days that have passed since the deadline day, at least 1.
        overdue = sum(_working(last + timedelta(days=n)) for n in range(1, (today - last).days + 1))
        return -max(overdue, 1)
    # Counted after today up to the deadline day: on the deadline day 0 are left (the answer is
    # due by its end), on the working day before it 1.
    return sum(_working(today + timedelta(days=n)) for n in range(1, (last - today).days + 1))


def _working(day: date) -> int:
    return int(is_working_day(day)[0])
