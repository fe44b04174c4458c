"""Builders for `TargetComponents`, the set of components a dispatch acts on.

The wire message is a oneof of three shapes: component ids, component
categories, or categories refined by a type (battery, inverter, EV charger).
A component type names its category, so `BatteryType.LI_ION` alone is enough
to mean "Li-ion batteries".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from ._proto.frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    BatteryType,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
)
from ._proto.frequenz.api.dispatch.v1 import (
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from .validation import check_message, check_uint64, shown

__all__ = [
    "ComponentType",
    "TargetLike",
    "category_and_type",
    "target_from_categories",
    "target_from_ids",
    "target_from_types",
    "to_target",
]

ComponentType = BatteryType | InverterType | EvChargerType
"""A component type; each one implies its category."""

TargetLike = (
    TargetComponents
    | Iterable[int]
    | Iterable[ElectricalComponentCategory | str]
    | Iterable[ElectricalComponentCategory | ComponentType | TargetComponentsCategoryAndType]
)
"""Anything `to_target` accepts."""


def _check_id(value: object) -> int:
    # Enums are ints too; an id given as a category is a mistake, not an id.
    if hasattr(value, "name"):
        raise ValueError(f"component id must be an int, got {shown(value)}")
    return check_uint64(value, "component id")


def _category(value: ElectricalComponentCategory | str) -> ElectricalComponentCategory:
    if isinstance(value, str):
        name = value.strip().upper().removeprefix("ELECTRICAL_COMPONENT_CATEGORY_")
        try:
            value = ElectricalComponentCategory[name]
        except KeyError:
            allowed = ", ".join(c.name for c in ElectricalComponentCategory if c)
            raise ValueError(
                f"unknown component category {shown(name)} (allowed: {allowed})"
            ) from None
    if not isinstance(value, ElectricalComponentCategory):
        raise ValueError(f"expected an ElectricalComponentCategory, got {shown(value)}")
    if value == ElectricalComponentCategory.UNSPECIFIED:
        raise ValueError("component category must not be UNSPECIFIED")
    return value


def target_from_ids(*ids: int | Iterable[int]) -> TargetComponents:
    """Target the components with these ids: `target_from_ids(1, 2)` or `([1, 2])`.

    Args:
        *ids: component ids (ints in 0..2**64-1) or iterables of them.

    Returns:
        A target of the component-ids shape.

    Raises:
        ValueError: no id is given, or one is not an int in range (an enum
            member such as a category is refused).
    """
    flat: list[int] = []
    for item in ids:
        if isinstance(item, int):
            flat.append(_check_id(item))
        else:
            flat.extend(_check_id(i) for i in item)
    if not flat:
        raise ValueError("target needs at least one component id")
    return TargetComponents(component_ids=TargetComponentsIdSet(ids=flat))


def target_from_categories(*categories: ElectricalComponentCategory | str) -> TargetComponents:
    """Target every component of these categories.

    Args:
        *categories: `ElectricalComponentCategory` members or their names
            (`"BATTERY"` or `"ELECTRICAL_COMPONENT_CATEGORY_BATTERY"`, any case).

    Returns:
        A target of the categories shape.

    Raises:
        ValueError: no category is given, a name is unknown, or one is UNSPECIFIED.
    """
    if not categories:
        raise ValueError("target needs at least one component category")
    return TargetComponents(
        component_categories=TargetComponentsCategorySet(
            categories=[_category(c) for c in categories]
        )
    )


def category_and_type(
    kind: ComponentType | ElectricalComponentCategory | TargetComponentsCategoryAndType,
) -> TargetComponentsCategoryAndType:
    """Build one category+type entry; a bare category means "any type of it".

    Args:
        kind: a component type (its category is implied), a category, or a
            ready entry (returned as is).

    Returns:
        The entry.

    Raises:
        ValueError: `kind` is not a type, category or entry, or is UNSPECIFIED.
    """
    if isinstance(kind, TargetComponentsCategoryAndType):
        return kind
    if isinstance(kind, BatteryType):
        return TargetComponentsCategoryAndType(
            category=ElectricalComponentCategory.BATTERY, battery=kind
        )
    if isinstance(kind, InverterType):
        return TargetComponentsCategoryAndType(
            category=ElectricalComponentCategory.INVERTER, inverter=kind
        )
    if isinstance(kind, EvChargerType):
        return TargetComponentsCategoryAndType(
            category=ElectricalComponentCategory.EV_CHARGER, ev_charger=kind
        )
    return TargetComponentsCategoryAndType(category=_category(kind))


def target_from_types(
    *kinds: ComponentType | ElectricalComponentCategory | TargetComponentsCategoryAndType,
) -> TargetComponents:
    """Target components by category and type, e.g. `target_from_types(BatteryType.LI_ION)`.

    Args:
        *kinds: component types, categories (any type of them) or ready entries.

    Returns:
        A target of the categories-with-types shape.

    Raises:
        ValueError: no kind is given, or one is not valid.
    """
    if not kinds:
        raise ValueError("target needs at least one component type")
    return TargetComponents(
        component_categories_types=TargetComponentsCategoryTypeSet(
            categories=[category_and_type(k) for k in kinds]
        )
    )


def to_target(value: TargetLike, field: str = "target") -> TargetComponents:
    """Turn ids, categories, types or a ready `TargetComponents` into a `TargetComponents`.

    A list of ints targets component ids; a list of categories (or category
    names) targets categories; a list containing any component type targets
    categories with types. Every enum value must be one the schema defines
    (a `TargetComponents` given as is is checked too).

    Args:
        value: a `TargetComponents` (returned as is) or a non-empty iterable of
            ids, or of categories / category names / component types.
        field: the argument's name, which every error message starts with.

    Returns:
        The target.

    Raises:
        ValueError: `value` is empty, a str, mixes ids with categories or
            types, or holds an entry that is neither, or an unknown enum value.
    """
    try:
        if isinstance(value, list | tuple) and value and all(type(i) is int for i in value):
            # Plain ids, the common case: target_from_ids checks each one's
            # range, which is all the walk below would check.
            return target_from_ids(cast("list[int]", value))
        target = _to_target(value)
        check_message(target, field)
    except ValueError as error:
        message = str(error)
        if message.startswith(field):
            raise
        raise ValueError(f"{field}: {message}") from None
    return target


def _to_target(value: TargetLike) -> TargetComponents:
    if isinstance(value, TargetComponents):
        return value
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(
            "target must be a TargetComponents or a list of component ids, "
            f"categories or types, got {type(value).__name__}"
        )
    items: list[Any] = list(value)
    if not items:
        raise ValueError("target must name at least one component, id, category or type")
    kinds = {_kind(item) for item in items}
    if "id" in kinds:
        if len(kinds) > 1:
            raise ValueError("target mixes component ids with categories or types; use one kind")
        return target_from_ids(*items)
    if "type" in kinds:
        return target_from_types(*(_category(i) if isinstance(i, str) else i for i in items))
    return target_from_categories(*items)


def _kind(item: object) -> str:
    if isinstance(
        item, BatteryType | InverterType | EvChargerType | TargetComponentsCategoryAndType
    ):
        return "type"
    if isinstance(item, ElectricalComponentCategory | str):
        return "category"
    if isinstance(item, int) and not isinstance(item, bool) and not hasattr(item, "name"):
        return "id"
    raise ValueError(
        f"target entry {shown(item)} is not a component id, category or component type"
    )
