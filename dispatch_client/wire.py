"""The wire messages of the Dispatch API's gRPC service, its client stub and server base.

`Client` builds and reads these itself; import them from here to talk to the
service without it (e.g. with the generated stub on your own grpclib
channel) or to implement a server. The domain messages a `Client` returns
(`Dispatch`, `DispatchData`, `RecurrenceRule`, `TargetComponents`, ...) are
exported by the package root.

```python
from grpclib.client import Channel
from dispatch_client.wire import GetMicrogridDispatchRequest, MicrogridDispatchServiceStub

stub = MicrogridDispatchServiceStub(Channel("localhost", 50051))
response = await stub.get_microgrid_dispatch(
    GetMicrogridDispatchRequest(microgrid_id=1, dispatch_id=2)
)
```
"""

from ._proto.frequenz.api.common.v1alpha8.pagination import PaginationInfo, PaginationParams
from ._proto.frequenz.api.common.v1alpha8.types import Interval
from ._proto.frequenz.api.dispatch.v1 import (
    CreateMicrogridDispatchRequest,
    CreateMicrogridDispatchResponse,
    DeleteMicrogridDispatchRequest,
    DeleteMicrogridDispatchResponse,
    DispatchFilter,
    DispatchFilterRecurrenceFilter,
    GetMicrogridDispatchRequest,
    GetMicrogridDispatchResponse,
    ListMicrogridDispatchesRequest,
    ListMicrogridDispatchesResponse,
    MicrogridDispatchServiceBase,
    MicrogridDispatchServiceStub,
    StreamMicrogridDispatchesRequest,
    StreamMicrogridDispatchesResponse,
    UpdateMicrogridDispatchRequest,
    UpdateMicrogridDispatchRequestDispatchUpdate,
    UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate,
    UpdateMicrogridDispatchResponse,
)
from ._proto.google.protobuf import FieldMask

__all__ = [
    "CreateMicrogridDispatchRequest",
    "CreateMicrogridDispatchResponse",
    "DeleteMicrogridDispatchRequest",
    "DeleteMicrogridDispatchResponse",
    "DispatchFilter",
    "DispatchFilterRecurrenceFilter",
    "FieldMask",
    "GetMicrogridDispatchRequest",
    "GetMicrogridDispatchResponse",
    "Interval",
    "ListMicrogridDispatchesRequest",
    "ListMicrogridDispatchesResponse",
    "MicrogridDispatchServiceBase",
    "MicrogridDispatchServiceStub",
    "PaginationInfo",
    "PaginationParams",
    "StreamMicrogridDispatchesRequest",
    "StreamMicrogridDispatchesResponse",
    "UpdateMicrogridDispatchRequest",
    "UpdateMicrogridDispatchRequestDispatchUpdate",
    "UpdateMicrogridDispatchRequestDispatchUpdateRecurrenceRuleUpdate",
    "UpdateMicrogridDispatchResponse",
]
