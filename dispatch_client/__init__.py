"""Pure-asyncio client for the Frequenz Dispatch API (grpclib + betterproto2).

The generated betterproto2 messages are the domain model and are re-exported
here, so `from dispatch_client import Dispatch, RecurrenceRule` is the stable
import path; `dispatch_client._proto` is an implementation detail. The root
holds the client, its errors, the domain messages and enums, and helpers; the
wire Request/Response classes, the stub and the service base are in
`dispatch_client.wire`.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._proto.frequenz.api.common.v1alpha8.microgrid.electrical_components import (
    BatteryType,
    ElectricalComponentCategory,
    EvChargerType,
    InverterType,
)
from ._proto.frequenz.api.common.v1alpha8.streaming import Event
from ._proto.frequenz.api.dispatch.v1 import (
    Dispatch,
    DispatchData,
    DispatchMetadata,
    RecurrenceRule,
    RecurrenceRuleEndCriteria,
    RecurrenceRuleFrequency,
    RecurrenceRuleWeekday,
    SortField,
    SortOptions,
    SortOrder,
    TargetComponents,
    TargetComponentsCategoryAndType,
    TargetComponentsCategorySet,
    TargetComponentsCategoryTypeSet,
    TargetComponentsIdSet,
)
from .client import Client, SortSpec
from .connection import ChannelOptions
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ClientError,
    ClientNotConnected,
    DataLoss,
    DeadlineExceeded,
    DispatchApiError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    StreamGap,
    StreamOverflow,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownError,
)
from .targets import (
    ComponentType,
    TargetLike,
    category_and_type,
    target_from_categories,
    target_from_ids,
    target_from_types,
    to_target,
)

# A library sets no handlers of its own: without this, an app that configured
# no logging would get our WARNING lines on stderr through logging's last resort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .recurrence import is_running, next_run, runs, series_end, to_rrule, until
    from .schedule import RunTracker, RunTransition, Transition
    from .streaming import Backoff, DispatchEvent, SharedStream, StreamState, StreamStatus

# Schedule and stream helpers load on first use (PEP 562): a program that only
# makes unary calls doesn't pay for dateutil's rrule, anyio or their modules at
# import time.
_LAZY = {
    **dict.fromkeys(
        ("is_running", "next_run", "runs", "series_end", "to_rrule", "until"), "recurrence"
    ),
    **dict.fromkeys(("RunTracker", "RunTransition", "Transition"), "schedule"),
    **dict.fromkeys(
        ("Backoff", "DispatchEvent", "SharedStream", "StreamState", "StreamStatus"),
        "streaming",
    ),
}


def __getattr__(name: str) -> Any:
    """Import a lazily exported name from its module on first access.

    Args:
        name: the attribute asked for.

    Returns:
        The name's value, cached in the module from then on.

    Raises:
        AttributeError: the package has no such name.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the lazy names too, so completion and `dir()` see the whole API.

    Returns:
        The sorted names of the module, loaded or not.
    """
    return sorted(set(globals()) | set(_LAZY))


# Short aliases for the generated names users type most.
Frequency = RecurrenceRuleFrequency
Weekday = RecurrenceRuleWeekday
EndCriteria = RecurrenceRuleEndCriteria

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Backoff",
    "BatteryType",
    "Cancelled",
    "ChannelOptions",
    "Client",
    "ClientError",
    "ClientNotConnected",
    "ComponentType",
    "DataLoss",
    "DeadlineExceeded",
    "Dispatch",
    "DispatchApiError",
    "DispatchData",
    "DispatchEvent",
    "DispatchMetadata",
    "ElectricalComponentCategory",
    "EndCriteria",
    "EvChargerType",
    "Event",
    "FailedPrecondition",
    "Frequency",
    "Internal",
    "InvalidArgument",
    "InverterType",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RecurrenceRule",
    "RecurrenceRuleEndCriteria",
    "RecurrenceRuleFrequency",
    "RecurrenceRuleWeekday",
    "ResourceExhausted",
    "RunTracker",
    "RunTransition",
    "SharedStream",
    "SortField",
    "SortOptions",
    "SortOrder",
    "SortSpec",
    "StreamGap",
    "StreamOverflow",
    "StreamState",
    "StreamStatus",
    "TargetComponents",
    "TargetComponentsCategoryAndType",
    "TargetComponentsCategorySet",
    "TargetComponentsCategoryTypeSet",
    "TargetComponentsIdSet",
    "TargetLike",
    "Transition",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "Weekday",
    "__version__",
    "category_and_type",
    "is_running",
    "next_run",
    "runs",
    "series_end",
    "target_from_categories",
    "target_from_ids",
    "target_from_types",
    "to_rrule",
    "to_target",
    "until",
]
