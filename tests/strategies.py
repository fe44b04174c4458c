"""Hypothesis strategies shared by several test modules (this module holds no tests)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(
    *,
    max_text: int | None = None,
    max_key: int | None = None,
    max_items: int = 3,
    max_leaves: int = 12,
    integers: bool = True,
) -> st.SearchStrategy[Any]:
    """JSON-like Python values (what a Struct payload holds): scalars, lists and str-keyed dicts.

    Integers stay within 2**53, where a JSON number (a double) holds them exactly.
    """
    numbers = st.floats(allow_nan=False, allow_infinity=False)
    if integers:
        numbers = st.integers(-(2**53), 2**53) | numbers
    return st.recursive(
        st.none() | st.booleans() | numbers | st.text(max_size=max_text),
        lambda inner: (
            st.lists(inner, max_size=max_items)
            | st.dictionaries(st.text(max_size=max_key), inner, max_size=max_items)
        ),
        max_leaves=max_leaves,
    )
