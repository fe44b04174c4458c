"""What opening a stream costs the client, kept cheap without changing what is sent (issue 17, fleet)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_client import requests


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_list_all_is_list_page_without_filters(microgrid_id: int) -> None:
    # A shared stream's lists go through `list_all`: the server must see
    # exactly what `Client.list(microgrid_id)` sends.
    fast, full = requests.list_all(microgrid_id), requests.list_page(microgrid_id)
    assert (fast.path, fast.response_type) == (full.path, full.response_type)
    assert fast.request == full.request
    assert bytes(fast.request) == bytes(full.request)


@pytest.mark.parametrize("microgrid_id", [-1, 2**64, 1.0, "1", None, True])
def test_list_all_refuses_what_list_page_refuses(microgrid_id: object) -> None:
    with pytest.raises(ValueError) as full:
        requests.list_page(microgrid_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as fast:
        requests.list_all(microgrid_id)  # type: ignore[arg-type]
    assert str(fast.value) == str(full.value)
