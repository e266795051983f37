"""Time words in a query ("yesterday", "last week", "in May 2023") as a window of event times.

Recall uses the window as a soft boost, not a filter: a question about "May"
may be answered by a turn dated 30 April, and a wrong guess must not hide it.
Explicit filters (since / until) are hard; these hints are not.

Days, weeks and months are the asker's: they begin at midnight in the time zone of
`now` (by default, and for a naive `now`, this machine's local zone, as Python reads
naive times), so "yesterday" asked at 8 am in Tokyo is the Tokyo day before, not the
UTC one. The window is worked out in wall-clock time and each end given its zone's
offset on its own date, so a month across a daylight-saving change is still whole.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta

MONTHS = {m: i for i, m in enumerate(
    "january february march april may june july august september october november december".split(), 1)}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
MONTHS["sept"] = 9  # "Sept 2023"
MONTHS.pop("may", None)  # "may" alone is usually the verb; "in May" / "May 2023" are caught below
_MONTH_RE = "|".join(sorted(MONTHS, key=len, reverse=True))
_UNITS = {"day": 1, "week": 7, "month": 30, "year": 365}


def _month(year: int, month: int) -> tuple[datetime, datetime]:
    return datetime(year, month, 1), datetime(year + (month == 12), month % 12 + 1, 1)


def _day(d: datetime) -> datetime:
    return d.replace(hour=0, minute=0, second=0, microsecond=0)


def time_window(query: str, now: datetime | None = None) -> tuple[datetime, datetime] | None:
    """The [start, end) window of event times a query refers to, or None when it names no time (or one
    outside the calendar: "2000 years ago", "in December 9999"). `now` defaults to the local time here;
    a naive `now` is local time too."""
    if now is None or now.tzinfo is None:
        wall, tz = now or datetime.now(), None
    else:
        wall, tz = now.replace(tzinfo=None), now.tzinfo
    try:
        win = _window(query.lower(), wall)
        if win is None:
            return None
        return tuple(t.replace(tzinfo=tz) if tz is not None else t.astimezone() for t in win)  # type: ignore[return-value]
    except (OverflowError, ValueError, OSError):  # OSError: the platform's local-time conversion
        return None


def _window(q: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The window in naive wall-clock time of `now` (itself naive)."""
    today = _day(now)
    if re.search(r"\byesterday\b|\blast night\b", q):
        return today - timedelta(days=1), today
    if re.search(r"\btoday\b|\bthis morning\b|\btonight\b", q):
        return today, today + timedelta(days=1)
    m = re.search(r"\b(\d+|a|an|one|two|three|four|five|six)\s+(day|week|month|year)s?\s+ago\b", q)
    if m:
        n = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}.get(m.group(1))
        days = (n if n is not None else int(m.group(1))) * _UNITS[m.group(2)]
        centre = today - timedelta(days=days)
        half = timedelta(days=max(1, days // 4))
        return centre - half, centre + half + timedelta(days=1)
    m = re.search(r"\b(?:the\s+)?(past|last)\s+(week|month|year)\b", q)
    if m and (m.group(1) == "past" or q[m.start():].startswith("the ")):  # "the past week": the 7 days up to today
        return today - timedelta(days=_UNITS[m.group(2)]), today + timedelta(days=1)
    m = re.search(r"\b(last|this|past)\s+(week|month|year|weekend)\b", q)
    if m:
        unit = m.group(2)
        if unit == "weekend":  # "last weekend" on a weekday: the one just gone; on a weekend day: the one before
            sat = today - timedelta(days=(today.weekday() - 5) % 7)
            if m.group(1) == "this" and today.weekday() < 5:
                sat += timedelta(days=7)  # "this weekend" on a weekday: the coming one
            elif m.group(1) != "this" and today.weekday() >= 5:
                sat -= timedelta(days=7)
            return sat, sat + timedelta(days=2)
        if unit == "week":
            start = today - timedelta(days=today.weekday())
            return (start - timedelta(days=7), start) if m.group(1) == "last" else (start, start + timedelta(days=7))
        if unit == "month":
            if m.group(1) == "last":
                y, mo = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
                return _month(y, mo)
            return _month(now.year, now.month)
        y = now.year - (m.group(1) == "last")
        return datetime(y, 1, 1), datetime(y + 1, 1, 1)
    day = r"(?:\s+\d{1,2}(?:st|nd|rd|th)?\b)?"  # "May 5th, 2023", "in May of 2023"
    m = (re.search(rf"\b(in|during|of|since|on)\s+(?:early\s+|late\s+|mid-?\s*)?(may|{_MONTH_RE})\b{day}"
                   rf"(?:,?\s+(?:of\s+)?(\d{{4}}))?", q)
         or re.search(rf"\b()(may|{_MONTH_RE}){day},?\s+(?:of\s+)?(\d{{4}})\b", q))
    if m:
        mo = MONTHS.get(m.group(2), 5)
        y = int(m.group(3)) if m.group(3) else now.year if mo <= now.month else now.year - 1
        start, end = _month(y, mo)
        if m.group(1) == "since":  # from that month's start to now, not that month alone
            return start, max(end, now + timedelta(days=1))
        return start, end
    m = re.search(r"\b(?:in|during|of)\s+((?:19|20)\d\d)\b", q)
    if m:
        y = int(m.group(1))
        return datetime(y, 1, 1), datetime(y + 1, 1, 1)
    return None
