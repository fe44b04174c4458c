"""Unit tests of the timeline renderer (pure: rows + window + width -> lines)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_client.cli.timeline import Glyphs, Row, render

START = dt.datetime(2025, 1, 31, 21, 47, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _bar(line: str, label_width: int) -> str:
    return line[label_width + 1 :]


def test_one_off_run_is_drawn_where_it_falls() -> None:
    rows = [Row("#1 CHARGE", [(START + 6 * HOUR, START + 12 * HOUR)])]
    lines = render(rows, START, START + 24 * HOUR, width=80, glyphs=Glyphs.ascii())
    assert all(len(line) <= 80 for line in lines)
    row = lines[2]
    assert row.startswith("#1 CHARGE ")
    bar = _bar(row, len("#1 CHARGE"))
    assert len(bar) == 80 - len("#1 CHARGE") - 1
    filled = [i for i, c in enumerate(bar) if c == "#"]
    # A quarter to a half of the window, within one column of rounding.
    assert abs(filled[0] - len(bar) / 4) <= 1
    assert abs(filled[-1] + 1 - len(bar) / 2) <= 1
    assert filled == list(range(filled[0], filled[-1] + 1))


def test_axis_labels_whole_hours_and_dates_at_midnight() -> None:
    lines = render([Row("x", [])], START, START + 24 * HOUR, width=80)
    axis, rule = lines[0], lines[1]
    assert "02-01" in axis  # midnight shows the date
    assert "06:00" in axis
    assert "┬" in rule
    # Each label starts right above its tick.
    for position, char in enumerate(rule):
        if char == "┬" and axis[position : position + 1] not in ("", " "):
            assert axis[position].isdigit()


def test_open_ended_runs_fill_to_the_edge_and_dry_runs_differ() -> None:
    rows = [
        Row("open", [(START + 20 * HOUR, None)]),
        Row("dry", [(START, START + HOUR)], dry_run=True),
    ]
    lines = render(rows, START, START + 24 * HOUR, width=60, glyphs=Glyphs.ascii())
    assert lines[2].endswith("#")
    assert "%" in lines[3] and "#" not in lines[3]
    assert "running" in lines[-1] and "dry run" in lines[-1]


def test_short_runs_stay_visible_and_runs_outside_do_not_show() -> None:
    rows = [
        Row("blip", [(START + 5 * HOUR, START + 5 * HOUR)]),
        Row("gone", [(START - 3 * HOUR, START - HOUR), (START + 30 * HOUR, START + 31 * HOUR)]),
    ]
    lines = render(rows, START, START + 24 * HOUR, width=80, glyphs=Glyphs.ascii())
    assert lines[2].count("#") == 1
    assert "#" not in lines[3]


def test_long_labels_are_cut() -> None:
    lines = render([Row("#12 A_VERY_LONG_DISPATCH_TYPE_NAME", [])], START, START + HOUR, width=80)
    assert lines[2].startswith("#12 A_VERY_LONG_DISPATC…")
    assert all(len(line) <= 80 for line in lines)


def test_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="end after"):
        render([], START, START)


@given(
    hours=st.floats(min_value=0.1, max_value=24 * 366),
    width=st.integers(min_value=40, max_value=200),
    offsets=st.lists(st.tuples(st.floats(-2, 2), st.floats(0, 2)), max_size=5),
)
def test_lines_never_exceed_the_width(
    hours: float, width: int, offsets: list[tuple[float, float]]
) -> None:
    span = dt.timedelta(hours=hours)
    runs = [(START + span * a, START + span * (a + b)) for a, b in offsets]
    lines = render([Row("#1 CHARGE", runs)], START, START + span, width=width)
    assert all(len(line) <= width for line in lines)
    assert lines[2].startswith("#1 CHARGE ")
