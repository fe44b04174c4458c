"""How `dispatch_client.schedule` groups dispatches into runs: the merge strategies and group keys.

Re-exported by `schedule`, which is where callers import them from.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Literal, TypeAlias

from ._proto.frequenz.api.dispatch.v1 import Dispatch, TargetComponents
from .validation import dispatch_id_of

Merge: TypeAlias = Literal["type", "type+target"] | Callable[[Dispatch], Hashable] | None
"""How `running()` groups dispatches into runs: see `RunTracker`."""

MERGE_STRATEGIES = ("type", "type+target")
"""The merge strategies named by a string."""


def target_key(target: TargetComponents | None) -> tuple[str, frozenset[Hashable]]:
    """Return a hashable form of `target`: its kind and the set of what it names.

    Order and repeats do not matter: `[1, 2]` and `[2, 1, 1]` name the same
    components. Kinds are `"ids"`, `"categories"`, `"types"` and `"none"`.
    """
    if target is None:
        return ("none", frozenset())
    if target.component_ids is not None:
        return ("ids", frozenset(target.component_ids.ids))
    if target.component_categories is not None:
        return ("categories", frozenset(int(c) for c in target.component_categories.categories))
    if target.component_categories_types is not None:
        return (
            "types",
            frozenset(
                (int(c.category), c.battery, c.inverter, c.ev_charger)
                for c in target.component_categories_types.categories
            ),
        )
    return ("none", frozenset())


def _by_type(dispatch: Dispatch) -> tuple[str, bool]:
    data = dispatch.data
    return ("", False) if data is None else (data.type, bool(data.is_dry_run))


def _by_type_and_target(dispatch: Dispatch) -> tuple[str, bool, tuple[str, frozenset[Hashable]]]:
    data = dispatch.data
    return (*_by_type(dispatch), target_key(None if data is None else data.target))


def merge_key(merge: Merge) -> Callable[[Dispatch], Hashable]:
    """Return the function that gives a dispatch's group key under `merge`.

    Args:
        merge: None (each dispatch is its own run, keyed by its id), `"type"`
            (key: type and dry-run flag), `"type+target"` (type, dry-run flag
            and `target_key` of the target) or a callable `Dispatch -> Hashable`.

    Returns:
        The key function.

    Raises:
        ValueError: `merge` is none of these.
    """
    if merge is None:
        return dispatch_id_of
    if isinstance(merge, str):
        if merge == "type":
            return _by_type
        if merge == "type+target":
            return _by_type_and_target
    elif callable(merge):
        return merge
    raise ValueError(
        f"merge must be None, {' or '.join(map(repr, MERGE_STRATEGIES))}"
        f" or a callable Dispatch -> Hashable, not {merge!r}"
    )
