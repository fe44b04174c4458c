"""TargetComponents builders."""

from __future__ import annotations

import betterproto2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_client import (
    BatteryType,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsIdSet,
    category_and_type,
    target_from_categories,
    target_from_ids,
    target_from_types,
    to_target,
)

Category = ElectricalComponentCategory


def test_from_ids() -> None:
    expected = TargetComponents(component_ids=TargetComponentsIdSet(ids=[1, 2, 3]))
    assert target_from_ids(1, 2, 3) == expected
    assert target_from_ids([1, 2], 3) == expected
    assert to_target([1, 2, 3]) == expected
    assert to_target(i for i in (1, 2, 3)) == expected


def test_from_categories_and_names() -> None:
    target = target_from_categories(
        Category.BATTERY, "inverter", "ELECTRICAL_COMPONENT_CATEGORY_CHP"
    )
    assert target.component_categories is not None
    assert target.component_categories.categories == [
        Category.BATTERY,
        Category.INVERTER,
        Category.CHP,
    ]
    assert to_target([Category.BATTERY, "INVERTER"]) == target_from_categories(
        "BATTERY", "INVERTER"
    )


def test_from_types_implies_the_category() -> None:
    target = target_from_types(BatteryType.LI_ION, InverterType.PV, EvChargerType.DC)
    assert target.component_categories_types is not None
    entries = target.component_categories_types.categories
    assert [e.category for e in entries] == [
        Category.BATTERY,
        Category.INVERTER,
        Category.EV_CHARGER,
    ]
    assert [betterproto2.which_one_of(e, "type") for e in entries] == [
        ("battery", BatteryType.LI_ION),
        ("inverter", InverterType.PV),
        ("ev_charger", EvChargerType.DC),
    ]


def test_types_and_bare_categories_mix() -> None:
    target = to_target([BatteryType.NA_ION, Category.METER])
    assert target.component_categories_types is not None
    meter = target.component_categories_types.categories[1]
    assert meter == TargetComponentsCategoryAndType(category=Category.METER)
    assert betterproto2.which_one_of(meter, "type") == ("", None)
    assert category_and_type(meter) is meter


def test_target_components_pass_through() -> None:
    target = target_from_ids(7)
    assert to_target(target) is target


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "at least one"),
        ([1, Category.BATTERY], "mixes"),
        ([1, True], "not a component id"),
        ([-1], r"component id must be an int in 0\.\.2\*\*64-1, got -1"),
        ([2**64], r"component id must be an int in 0\.\.2\*\*64-1"),
        (["nonsense"], "unknown component category"),
        ([Category.UNSPECIFIED], "UNSPECIFIED"),
        ("BATTERY", "list"),
        (5, "list"),
        ([1.5], "not a component id"),
    ],
)
def test_bad_targets(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_target(value)  # type: ignore[arg-type]


def test_empty_builders_raise() -> None:
    for build in (target_from_ids, target_from_categories, target_from_types):
        with pytest.raises(ValueError, match="at least one"):
            build()


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=20))
def test_ids_round_trip_through_the_wire(ids: list[int]) -> None:
    target = to_target(ids)
    assert TargetComponents.parse(bytes(target)) == target
    assert target.component_ids is not None
    assert target.component_ids.ids == ids


@given(
    st.lists(
        st.sampled_from([*BatteryType, *InverterType, *EvChargerType, *list(Category)[1:]]),
        min_size=1,
        max_size=8,
    )
)
def test_any_enum_mix_builds_a_valid_target(items: list[object]) -> None:
    target = to_target(items)  # type: ignore[arg-type]
    assert TargetComponents.parse(bytes(target)) == target
    which, _ = betterproto2.which_one_of(target, "components")
    has_type = any(not isinstance(i, Category) for i in items)
    assert which == ("component_categories_types" if has_type else "component_categories")
