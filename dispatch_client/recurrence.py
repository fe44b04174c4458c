"""When a dispatch runs: its recurrence rule evaluated with dateutil.

A dispatch runs at every start its recurrence rule produces from `start_time`
(RFC 5545 RRULE semantics, computed by `dateutil.rrule`), or once at
`start_time` when it has no rule or the rule's frequency is UNSPECIFIED.

Precise semantics shared by every function here:

- A run covers the half-open interval ``[s, s + duration)``. With
  ``duration=None`` a run never ends. With ``duration=0`` a run is an instant:
  it is never *running*, but `runs` still lists it when ``s`` is in the window.
- An inactive dispatch (``is_active=False``) has no runs: `next_run`, `runs`,
  `is_running` and `until` treat it as never running. `series_end` describes
  the schedule itself and ignores `is_active` (the server stores it as
  ``metadata.end_time``).
- Everything is computed in UTC (the service's time base), so a rule repeats at
  the same UTC time, not at the same local wall-clock time across DST changes.
  Naive datetimes raise `ValueError` naming the argument; aware datetimes in
  any zone are converted to UTC. Results are aware UTC datetimes.
- As in dateutil, a `start_time` that does not match the rule's by* parts is
  not itself a run; the first run is the first matching instant after it.
  dateutil works in whole seconds, so the start's sub-second part is carried
  over to every run: the first run is exactly `start_time`.
- `until_time` (inclusive) limits when runs may *start*; a run that started
  before it is not cut short. A series that never runs at all (e.g. the 30th
  of February) ends at its `start_time`.

The functions never enumerate a series from its beginning to reach a far-away
time: they re-anchor the rule on the period (of the rule's frequency and
interval) that contains the time asked about, where dateutil would produce the
very same starts. Count-limited series (at most 4096 runs) are enumerated once
and cached.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from dateutil import rrule as du

from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
    RecurrenceRule,
    RecurrenceRuleFrequency,
)
from .validation import check_recurrence, to_utc

__all__ = ["is_running", "next_run", "runs", "series_end", "to_rrule", "until"]

_Freq = Literal[0, 1, 2, 3, 4, 5, 6]

_FREQUENCIES: dict[RecurrenceRuleFrequency, _Freq] = {
    RecurrenceRuleFrequency.MINUTELY: du.MINUTELY,
    RecurrenceRuleFrequency.HOURLY: du.HOURLY,
    RecurrenceRuleFrequency.DAILY: du.DAILY,
    RecurrenceRuleFrequency.WEEKLY: du.WEEKLY,
    RecurrenceRuleFrequency.MONTHLY: du.MONTHLY,
    RecurrenceRuleFrequency.YEARLY: du.YEARLY,
}

# Rough length of one period per frequency: only sizes the first backward
# search step in `_Series.latest`, correctness does not depend on it.
_PERIOD_HINT: dict[int, timedelta] = {
    du.MINUTELY: timedelta(minutes=1),
    du.HOURLY: timedelta(hours=1),
    du.DAILY: timedelta(days=1),
    du.WEEKLY: timedelta(weeks=1),
    du.MONTHLY: timedelta(days=31),
    du.YEARLY: timedelta(days=366),
}

_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_TICK = timedelta(microseconds=1)
_MIN_UTC = datetime.min.replace(tzinfo=UTC)
_MAX_UTC = datetime.max.replace(tzinfo=UTC)


def _plus(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return _MAX_UTC


def _minus(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment - delta
    except OverflowError:
        return _MIN_UTC


def _sorted(values: Iterable[int]) -> tuple[int, ...] | None:
    return tuple(sorted(set(values))) or None


@dataclass(frozen=True)
class _Rule:
    """A recurrence rule in dateutil terms.

    When built for a schedule, dateutil's implicit defaults (taken from
    dtstart) are spelled out, so the rule can be restarted from any later
    dtstart and still produce the same starts.
    """

    freq: _Freq
    interval: int
    count: int | None
    until: datetime | None
    bymonth: tuple[int, ...] | None
    bymonthday: tuple[int, ...] | None
    byweekday: tuple[int, ...] | None
    byhour: tuple[int, ...] | None
    byminute: tuple[int, ...] | None
    bysecond: tuple[int, ...] | None = None

    @classmethod
    def from_proto(cls, rule: RecurrenceRule, freq: _Freq) -> _Rule:
        count = until = None
        if rule.end_criteria is not None:
            count = rule.end_criteria.count
            if rule.end_criteria.until_time is not None:
                until = to_utc(rule.end_criteria.until_time, "recurrence.end_criteria.until_time")
        return cls(
            freq=freq,
            interval=rule.interval or 1,
            count=count,
            until=until,
            bymonth=_sorted(rule.bymonths),
            bymonthday=_sorted(rule.bymonthdays),
            # The proto numbers weekdays from MONDAY=1, dateutil from MO=0.
            byweekday=_sorted(int(day) - 1 for day in rule.byweekdays),
            byhour=_sorted(rule.byhours),
            byminute=_sorted(rule.byminutes),
        )

    def with_defaults(self, dtstart: datetime, shift: timedelta) -> _Rule:
        """Spell out dateutil's dtstart-derived defaults; move `until` by `shift`."""
        bymonth, bymonthday, byweekday = self.bymonth, self.bymonthday, self.byweekday
        # Same conditions as dateutil.rrule.__init__ (we never use byweekno,
        # byyearday or byeaster).
        if bymonthday is None and byweekday is None:
            if self.freq == du.YEARLY:
                bymonth = bymonth or (dtstart.month,)
                bymonthday = (dtstart.day,)
            elif self.freq == du.MONTHLY:
                bymonthday = (dtstart.day,)
            elif self.freq == du.WEEKLY:
                byweekday = (dtstart.weekday(),)
        byhour = self.byhour
        if byhour is None and self.freq < du.HOURLY:
            byhour = (dtstart.hour,)
        byminute = self.byminute
        if byminute is None and self.freq < du.MINUTELY:
            byminute = (dtstart.minute,)
        return _Rule(
            freq=self.freq,
            interval=self.interval,
            count=self.count,
            # dateutil compares whole-second starts with `until`; our starts
            # are `shift` later, so compare against `until - shift`.
            until=None if self.until is None else self.until - shift,
            bymonth=bymonth,
            bymonthday=bymonthday,
            byweekday=byweekday,
            byhour=byhour,
            byminute=byminute,
            bysecond=(dtstart.second,),
        )

    def to_dateutil(
        self, dtstart: datetime, *, count: int | None = None, until: datetime | None = None
    ) -> du.rrule:
        """Build the dateutil rule; `until`, when given, may only tighten the rule's own."""
        if self.until is not None and (until is None or self.until < until):
            until = self.until
        return du.rrule(
            self.freq,
            dtstart=dtstart,
            interval=self.interval,
            # RFC 5545's default week start; dateutil would otherwise follow
            # calendar.firstweekday(), a process-global setting.
            wkst=du.MO,
            count=count,
            until=until,
            bymonth=self.bymonth,
            bymonthday=self.bymonthday,
            byweekday=self.byweekday,
            byhour=self.byhour,
            byminute=self.byminute,
            bysecond=self.bysecond,
        )


def to_rrule(rule: RecurrenceRule | None, start: datetime) -> du.rrule | None:
    """Return the dateutil rule for `rule` starting at `start`, or None if it runs once.

    `start` is converted to UTC. dateutil keeps whole seconds only, so the
    returned rule drops the start's microseconds (the run functions of this
    module add them back). Raises `ValueError` for a naive `start`, a rule the
    service would reject, or a rule dateutil proves can never produce a run.
    """
    start = to_utc(start, "start")
    if rule is None or rule.freq == RecurrenceRuleFrequency.UNSPECIFIED:
        return None
    check_recurrence(rule)
    parsed = _Rule.from_proto(rule, _FREQUENCIES[RecurrenceRuleFrequency(rule.freq)])
    try:
        return parsed.to_dateutil(start, count=parsed.count)
    except ValueError as error:
        raise ValueError(
            f"recurrence never produces a run from {start.isoformat()}: {error}"
        ) from error


def _minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _week_start(moment: datetime) -> datetime:
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=moment.weekday())


def _period_index(freq: int, base: datetime, moment: datetime) -> int:
    """Count the periods from the one containing `base` to the one containing `moment`."""
    if freq == du.YEARLY:
        return moment.year - base.year
    if freq == du.MONTHLY:
        return (moment.year - base.year) * 12 + moment.month - base.month
    if freq == du.WEEKLY:
        return (_week_start(moment) - _week_start(base)).days // 7
    if freq == du.DAILY:
        return (moment.date() - base.date()).days
    if freq == du.HOURLY:
        return (_hour_start(moment) - _hour_start(base)) // timedelta(hours=1)
    return (_minute_start(moment) - _minute_start(base)) // timedelta(minutes=1)


def _period_start(freq: int, base: datetime, index: int) -> datetime:
    """Start of the period `index` periods after the one containing `base`.

    Raises OverflowError or ValueError past the end of the calendar.
    """
    if freq == du.YEARLY:
        return datetime(base.year + index, 1, 1, tzinfo=UTC)
    if freq == du.MONTHLY:
        years, month = divmod(base.month - 1 + index, 12)
        return datetime(base.year + years, month + 1, 1, tzinfo=UTC)
    if freq == du.WEEKLY:
        return _week_start(base) + timedelta(weeks=index)
    if freq == du.DAILY:
        return base.replace(hour=0, minute=0, second=0) + timedelta(days=index)
    if freq == du.HOURLY:
        return _hour_start(base) + timedelta(hours=index)
    return _minute_start(base) + timedelta(minutes=index)


def _never_matches(rule: _Rule, base: datetime) -> bool:
    """Cheaply detect rules that can never produce a run.

    dateutil would search such rules up to year 9999, which takes seconds
    for the sub-daily frequencies.
    """
    months = set(rule.bymonth or range(1, 13))
    if rule.freq == du.MONTHLY:
        # Every `interval` months from dtstart's month may skip some months
        # for ever (every 2 months from April never sees March).
        months &= {(base.month - 1 + k * rule.interval) % 12 + 1 for k in range(12)}
    if not months:
        return True
    # e.g. the 30th of February: no visited month has such a day.
    if rule.bymonthday and not any(
        abs(day) <= _LONGEST_MONTH[m - 1] for m in months for day in rule.bymonthday
    ):
        return True
    # Sub-weekly frequencies visit positions in the week that step by the
    # interval, e.g. DAILY every 7 days only ever sees dtstart's weekday.
    weekdays = rule.byweekday or range(7)
    if rule.freq == du.DAILY:
        cycle, origin = 7, base.weekday()
        wanted: Iterable[int] = weekdays
    elif rule.freq == du.HOURLY:
        cycle, origin = 7 * 24, base.weekday() * 24 + base.hour
        wanted = (w * 24 + h for w in weekdays for h in rule.byhour or range(24))
    elif rule.freq == du.MINUTELY:
        cycle = 7 * 24 * 60
        origin = (base.weekday() * 24 + base.hour) * 60 + base.minute
        wanted = (
            (w * 24 + h) * 60 + m
            for w in weekdays
            for h in rule.byhour or range(24)
            for m in rule.byminute or range(60)
        )
    else:
        return False
    step = math.gcd(rule.interval, cycle)
    return step > 1 and all((position - origin) % step for position in wanted)


def _guarded(rule: du.rrule) -> Iterator[datetime]:
    try:
        yield from rule
    except ValueError:
        # dateutil raises mid-iteration once interval and byhour can never
        # meet again: the series has no further starts.
        return


@dataclass(frozen=True)
class _Series:
    """The run starts of one schedule (hashable, so count-limited series cache)."""

    start: datetime  # UTC, microseconds kept
    rule: _Rule | None  # None: runs once, at start
    empty: bool = False

    @property
    def base(self) -> datetime:
        """The start as dateutil sees it (whole seconds)."""
        return self.start.replace(microsecond=0)

    @property
    def shift(self) -> timedelta:
        """What every dateutil start is moved by to get the real start."""
        return timedelta(microseconds=self.start.microsecond)

    @property
    def infinite(self) -> bool:
        """Whether the rule has no end criteria (it may still have no runs)."""
        return self.rule is not None and self.rule.count is None and self.rule.until is None

    def starts(
        self, moment: datetime, *, strict: bool, stop: datetime | None = None
    ) -> Iterator[datetime]:
        """Yield starts at or after (`strict`: after) `moment`, ascending, up to `stop` inclusive."""
        if self.empty:
            return iter(())
        if self.rule is None:
            hit = self.start > moment or (not strict and self.start == moment)
            return iter((self.start,) if hit and (stop is None or self.start <= stop) else ())
        if self.rule.count is not None:
            every = _count_limited_starts(self)
            first = (bisect_right if strict else bisect_left)(every, moment)
            last = len(every) if stop is None else bisect_right(every, stop)
            return iter(every[first:last])
        return self._rule_starts(moment, strict=strict, stop=stop)

    def _rule_starts(
        self, moment: datetime, *, strict: bool, stop: datetime | None
    ) -> Iterator[datetime]:
        assert self.rule is not None
        rule, base, shift = self.rule, self.base, self.shift
        whole = moment - shift  # `moment` in dateutil's whole-second frame
        dtstart = base
        if whole > base:
            index = _period_index(rule.freq, base, whole)
            cycles, offset = divmod(index, rule.interval)
            try:
                # dateutil's starts in a period depend only on the period and
                # the (spelled-out) by* parts, never on earlier periods; so
                # starting the rule inside a period the series visits, or at
                # the next visited period, yields the same later starts.
                if offset == 0:
                    dtstart = whole.replace(microsecond=0)
                else:
                    dtstart = _period_start(rule.freq, base, (cycles + 1) * rule.interval)
            except (OverflowError, ValueError):
                return
        try:
            dateutil_rule = rule.to_dateutil(
                dtstart, until=None if stop is None else _minus(stop, shift)
            )
        except ValueError:  # dateutil proved that by* values are unreachable
            return
        for start in _guarded(dateutil_rule):
            if start > whole or (start == whole and not strict):
                yield start + shift

    def first(self) -> datetime | None:
        """Return the first run start, None if there is none."""
        return _first_start(self)

    def latest(self, moment: datetime, *, after: datetime | None = None) -> datetime | None:
        """Return the last start at or before `moment` (and after `after`, when given)."""
        first = self.first()
        if first is None or first > moment:
            return None
        # Nothing starts before `first`: never search further back than that.
        bound = _minus(first, _TICK) if after is None else max(after, _minus(first, _TICK))
        if self.rule is None or self.rule.count is not None:
            every = _count_limited_starts(self) if self.rule else (self.start,)
            index = bisect_right(every, moment)
            return every[index - 1] if index and every[index - 1] > bound else None
        if self.rule.until is not None:
            moment = min(moment, self.rule.until + self.shift)
        # Search backwards in chunks that at least double in length: dense
        # rules are answered from a short chunk, sparse ones in a few steps.
        span = _PERIOD_HINT[self.rule.freq] * self.rule.interval
        high = moment
        while high > bound:
            low = max(bound, _minus(high, span))
            found = beyond = None
            for start in self.starts(low, strict=True):
                if start > high:
                    beyond = start
                    break
                found = start
            if found is not None:
                return found
            # dateutil only stops at the first start after `high`, so every
            # chunk also pays for the stretch up to `beyond`: keep chunks at
            # least that long so the total work stays linear.
            span = max(span * 2, (beyond or high) - low)
            high = low
        return None

    def last(self) -> datetime | None:
        """Return the last run start of a finite series, None if it has no runs."""
        return self.latest(_MAX_UTC)


@functools.lru_cache(maxsize=256)
def _first_start(series: _Series) -> datetime | None:
    # Cached: a start_time that does not match the rule may be far from the
    # first run, and `latest` asks for it on every call.
    return next(series.starts(series.start, strict=False), None)


@functools.lru_cache(maxsize=64)
def _count_limited_starts(series: _Series) -> tuple[datetime, ...]:
    # At most 4096 starts (the service's limit), so enumerating is bounded.
    assert series.rule is not None
    try:
        rule = series.rule.to_dateutil(series.base, count=series.rule.count)
    except ValueError:
        return ()
    return tuple(start + series.shift for start in _guarded(rule))


def _data(dispatch: Dispatch | DispatchData) -> DispatchData:
    if isinstance(dispatch, Dispatch):
        if dispatch.data is None:
            raise ValueError("dispatch has no data")
        return dispatch.data
    if isinstance(dispatch, DispatchData):
        return dispatch
    raise TypeError(f"expected a Dispatch or DispatchData, got {type(dispatch).__name__}")


def _series(data: DispatchData) -> _Series:
    if data.start_time is None:
        raise ValueError("dispatch has no start_time")
    start = to_utc(data.start_time, "start_time")
    rule = data.recurrence
    if rule is None or rule.freq == RecurrenceRuleFrequency.UNSPECIFIED:
        return _Series(start, None)
    check_recurrence(rule)
    freq = _FREQUENCIES[RecurrenceRuleFrequency(rule.freq)]
    base, shift = start.replace(microsecond=0), timedelta(microseconds=start.microsecond)
    parsed = _Rule.from_proto(rule, freq).with_defaults(base, shift)
    return _Series(start, parsed, empty=_never_matches(parsed, base))


def _duration(data: DispatchData) -> timedelta | None:
    return None if data.duration is None else timedelta(seconds=data.duration)


def next_run(dispatch: Dispatch | DispatchData, after: datetime) -> datetime | None:
    """Return the start of the first run strictly after `after`, None if there is none."""
    after = to_utc(after, "after")
    data = _data(dispatch)
    series = _series(data)
    if not data.is_active:
        return None
    return next(series.starts(after, strict=True), None)


def runs(
    dispatch: Dispatch | DispatchData, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime | None]]:
    """Yield ``(run_start, run_end)`` for every run overlapping ``[start, end)``, in order.

    A run overlaps when it starts in the window or started before it and is
    still running at `start`. `run_end` is None for runs that never end; as
    such runs overlap every later window, all runs started before `end` are
    yielded then. Instantaneous runs (duration 0) are yielded when they start
    in the window.
    """
    window_start, window_end = to_utc(start, "start"), to_utc(end, "end")
    data = _data(dispatch)
    series = _series(data)
    if not data.is_active or window_end <= window_start:
        return iter(())
    return _runs(series, _duration(data), window_start, window_end)


def _runs(
    series: _Series, duration: timedelta | None, window_start: datetime, window_end: datetime
) -> Iterator[tuple[datetime, datetime | None]]:
    if duration is None:
        starts = series.starts(series.start, strict=False, stop=window_end)
    elif not duration:
        starts = series.starts(window_start, strict=False, stop=window_end)
    else:
        # Runs that started within `duration` before the window still overlap it.
        starts = series.starts(_minus(window_start, duration), strict=True, stop=window_end)
    for run_start in starts:
        if run_start >= window_end:
            return
        yield run_start, None if duration is None else _plus(run_start, duration)


def is_running(dispatch: Dispatch | DispatchData, at: datetime) -> bool:
    """Return whether some run's ``[start, start + duration)`` contains `at`."""
    at = to_utc(at, "at")
    data = _data(dispatch)
    series = _series(data)
    duration = _duration(data)
    if not data.is_active or duration == timedelta(0):
        return False
    if duration is None:
        first = series.first()
        return first is not None and first <= at
    return series.latest(at, after=_minus(at, duration)) is not None


def until(dispatch: Dispatch | DispatchData, at: datetime) -> datetime | None:
    """Return the end of the run containing `at`; None if not running or the run never ends.

    When runs overlap (duration longer than the gap between starts), this is
    the end of the latest-started run containing `at`; a later run may
    already have started by then.
    """
    at = to_utc(at, "at")
    data = _data(dispatch)
    series = _series(data)
    duration = _duration(data)
    if not data.is_active or not duration:
        return None
    current = series.latest(at, after=_minus(at, duration))
    return None if current is None else _plus(current, duration)


def series_end(dispatch: Dispatch | DispatchData) -> datetime | None:
    """Return when the last run ends; None if the series never ends.

    None when the rule has no end criteria or the duration is None (and there
    is at least one run). A series without any run ends at its `start_time`.
    Ignores `is_active`: this describes the schedule.
    """
    data = _data(dispatch)
    series = _series(data)
    duration = _duration(data)
    if series.infinite:
        return None if series.first() is not None else series.start
    last = series.last()
    if last is None:
        return series.start
    return None if duration is None else _plus(last, duration)
