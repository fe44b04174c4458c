"""Prototype: decode with the upb-backed `protobuf` runtime, return betterproto2 objects.

betterproto2 parses the wire format in pure Python, one byte at a time. This
prototype lets upb (C) parse the bytes, using descriptors compiled from our own
`protos/` into a private descriptor pool (so nothing clashes with the official
`*_pb2` modules), and then builds the very same generated betterproto2
dataclasses from the parsed message, field by field, without going through
their `__init__`.

The conversion plan for each message class is computed once from two facts:
the betterproto2 field metadata (name, number, type, unwrap) and the upb field
descriptors, matched by field number.

Map entries are declared as plain repeated messages in the private pool: the
wire format is the same, and upb then keeps the entries in wire order, so a
payload's keys come out in the order betterproto2 gives them (upb's own maps
are hash tables). Big messages are decoded with the cyclic GC paused.

Known limits of the prototype: unknown fields are dropped (betterproto2 keeps
their raw bytes in `_unknown_fields`, which `==` ignores); only the
`google.protobuf.Timestamp` wrapper is unwrapped natively, other wrappers go
through the generated `to_wrapped()`; descriptors are compiled with
`grpcio-tools` (in a child process) at first use; a real implementation would
ship them serialized, written by `make protos`.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import keyword
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import betterproto2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dispatch_client._proto.google.protobuf import Timestamp

PROTOS = Path(__file__).resolve().parent.parent / "protos"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
GC_PAUSE_BYTES = 64 * 1024
"""Messages at least this big are decoded with the cyclic GC paused (a list page is ~300 KB)."""


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    """Compile protos/ (with their imports) into a private descriptor pool.

    protoc runs in a child process, so this process never loads grpc_tools
    (about 8 MB): its memory stays what shipping serialized descriptors
    would give.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.binpb"
        files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from pathlib import Path\n"
                "from grpc_tools import protoc\n"
                "include = Path(protoc.__file__).parent / '_proto'\n"
                "sys.exit(protoc.main(['protoc', f'-I{include}', *sys.argv[1:]]))",
                f"-I{PROTOS}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                *files,
            ],
            check=True,
        )
        file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in file_set.file:
        _unmap(file.message_type)
        pool.Add(file)
    return pool


def _unmap(messages: Any) -> None:
    """Make map entries plain nested messages: same wire format, but upb keeps their order."""
    for message in messages:
        if message.options.map_entry:
            message.options.ClearField("map_entry")
        _unmap(message.nested_type)


class _EnumLookup(dict[int, Any]):
    """value -> member, falling back to the enum class for values it does not know."""

    def __init__(self, enum_cls: Any) -> None:
        super().__init__((member.value, member) for member in enum_cls)
        self.enum_cls = enum_cls

    def __missing__(self, value: int) -> Any:
        return self.enum_cls(value)


class _Compiler:
    """Generates one specialised conversion function per message class.

    Each function reads the upb message's attributes directly (no generic
    field loop) and sets on a new instance what the generated dataclass
    `__init__` plus `__post_init__` would have set, in the same order.
    """

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "_new": object.__new__,
            "_EPOCH": _EPOCH,
            "_td": dt.timedelta,
        }
        self.names: dict[type, str] = {}
        self.sources: list[str] = []

    def function_for(self, cls: type, descriptor: Any) -> str:
        name = self.names.get(cls)
        if name is not None:
            return name
        name = self.names[cls] = f"_build_{len(self.names)}_{cls.__name__}"
        self.namespace[f"{name}_cls"] = cls
        meta = cls._betterproto  # type: ignore[attr-defined]
        by_number = {field.number: field for field in descriptor.fields}
        # Attributes are set one by one, in field order and then `_unknown_fields`,
        # exactly as the dataclass __init__ and __post_init__ do: instances then
        # share their class's key table, which keeps them as small as
        # betterproto2's own (assigning a whole __dict__ would not).
        lines = [f"def {name}(m):", f"    o = _new({name}_cls)"]
        groups: dict[str, list[str]] = {}
        for field_name, field_meta in meta.meta_by_field_name.items():
            field = by_number[field_meta.number]
            if field_meta.group:
                # A oneof: one WhichOneof() call instead of a HasField() per member.
                lines.append(f"    o.{field_name} = None")
                value = self._value_expr(meta, field_name, field_meta, field, f"m.{field.name}")
                groups.setdefault(field_meta.group, []).append(
                    f"    {{}} k == {field.name!r}:\n        o.{field_name} = {value}"
                )
                continue
            expr = self._field_expr(meta, field_name, field_meta, field)
            lines.append(f"    o.{field_name} = {expr}")
        lines.append('    o._unknown_fields = b""')
        for group, branches in groups.items():
            lines.append(f"    k = m.WhichOneof({group!r})")
            lines += [b.format("if" if i == 0 else "elif") for i, b in enumerate(branches)]
        lines.append("    return o\n")
        self.sources.append("\n".join(lines))
        return name

    def _value_expr(self, meta: Any, field_name: str, field_meta: Any, field: Any, var: str) -> str:
        proto_type = field_meta.proto_type
        if proto_type == betterproto2.TYPE_MESSAGE:
            if field_meta.unwrap is not None:
                wrapper = field_meta.unwrap()
                if wrapper is Timestamp:
                    # The arithmetic of the generated Timestamp.to_datetime(), inlined.
                    return f"_EPOCH + _td(seconds={var}.seconds, microseconds={var}.nanos // 1000)"
                inner = self.function_for(wrapper, field.message_type)
                return f"{inner}({var}).to_wrapped()"
            sub = self.function_for(meta.cls_by_field[field_name], field.message_type)
            return f"{sub}({var})"
        if proto_type == betterproto2.TYPE_ENUM:
            lookup = f"_enum_{len(self.namespace)}"
            self.namespace[lookup] = _EnumLookup(meta.cls_by_field[field_name])
            return f"{lookup}[{var}]"
        return var

    def _field_expr(self, meta: Any, field_name: str, field_meta: Any, field: Any) -> str:
        attr = (
            f"m.{field.name}"
            if field.name.isidentifier() and not keyword.iskeyword(field.name)
            else f"getattr(m, {field.name!r})"
        )
        if field_meta.proto_type == betterproto2.TYPE_MAP:
            # In the private pool a map is a repeated entry message, so upb keeps the
            # wire order; later duplicates win, as in betterproto2.
            entry = field.message_type
            value_meta = field_meta.map_meta[1]
            value_field = entry.fields_by_name["value"]
            if value_meta.proto_type == betterproto2.TYPE_MESSAGE:
                sub = self.function_for(
                    meta.cls_by_field[f"{field_name}.value"], value_field.message_type
                )
                value = f'({sub}(e.value) if e.HasField("value") else None)'
            elif value_meta.proto_type == betterproto2.TYPE_ENUM:
                lookup = f"_enum_{len(self.namespace)}"
                self.namespace[lookup] = _EnumLookup(meta.cls_by_field[f"{field_name}.value"])
                value = f"{lookup}[e.value]"
            else:
                value = "e.value"
            return f"{{e.key: {value} for e in {attr}}}"
        if field_meta.repeated:
            single = self._value_expr(meta, field_name, field_meta, field, "x")
            return f"list({attr})" if single == "x" else f"[{single} for x in {attr}]"
        single = self._value_expr(meta, field_name, field_meta, field, attr)
        present = (
            field_meta.proto_type == betterproto2.TYPE_MESSAGE
            or field_meta.optional
            or field_meta.group
        )
        if present:
            return f"({single} if m.HasField({field.name!r}) else None)"
        return single

    def compile(self) -> dict[str, Any]:
        exec(compile("\n".join(self.sources), "<fastdecode>", "exec"), self.namespace)
        self.sources.clear()
        return self.namespace


_compiler = _Compiler()


@functools.cache
def decoder(cls: type[betterproto2.Message]) -> Callable[[bytes], Any]:
    """A function parsing bytes into an instance of the generated message class `cls`."""
    full_name = _full_name(cls)
    descriptor = _pool().FindMessageTypeByName(full_name)
    upb_cls = message_factory.GetMessageClass(descriptor)
    name = _compiler.function_for(cls, descriptor)
    build = _compiler.compile()[name]
    from_string = upb_cls.FromString

    def parse(data: bytes) -> Any:
        if len(data) < GC_PAUSE_BYTES or not gc.isenabled():
            return build(from_string(data))
        # A big message becomes tens of thousands of young objects with no
        # cycles among them; collecting while they are built only traverses
        # them again and again. One pass afterwards is enough.
        gc.disable()
        try:
            return build(from_string(data))
        finally:
            gc.enable()

    return parse


def _full_name(cls: type) -> str:
    # Generated modules live under dispatch_client._proto.<proto package>.
    package = cls.__module__.removeprefix("dispatch_client._proto.")
    return f"{package}.{cls.__name__}"


def parse_list_response(data: bytes) -> Any:
    """`ListMicrogridDispatchesResponse.parse(data)`, through upb."""
    from dispatch_client import ListMicrogridDispatchesResponse

    return decoder(ListMicrogridDispatchesResponse)(data)


def _edge_cases() -> list[Any]:
    """Messages with the corners a decoder gets wrong: defaults, extremes, oneofs, order."""
    from dispatch_client import (
        Dispatch,
        DispatchData,
        DispatchMetadata,
        Event,
        RecurrenceRule,
        RecurrenceRuleEndCriteria,
        StreamMicrogridDispatchesResponse,
    )
    from dispatch_client.validation import payload_to_struct

    payload = {"z": 0.0, "f": False, "n": None, "e": {}, "l": [], "s": "", "u": "ü✓", "a": [1, "x"]}
    extremes = Dispatch(
        metadata=DispatchMetadata(
            dispatch_id=2**64 - 1, create_time=dt.datetime(1, 1, 1, tzinfo=dt.UTC)
        ),
        data=DispatchData(
            type="ü✓",
            duration=0,
            payload=payload_to_struct(payload),
            recurrence=RecurrenceRule(
                bymonthdays=[-1, 31], end_criteria=RecurrenceRuleEndCriteria(count=0)
            ),
        ),
    )
    return [
        StreamMicrogridDispatchesResponse(dispatch=extremes, event=Event.DELETED),
        StreamMicrogridDispatchesResponse(),
        StreamMicrogridDispatchesResponse(dispatch=Dispatch()),
    ]


def main() -> None:
    """Check that both paths give identical objects, and time them."""
    import time

    from dispatch_client import ListMicrogridDispatchesResponse

    from .data import list_response

    messages = [*_edge_cases(), list_response(1000, dt.datetime.now(dt.UTC))]
    for message in messages:
        raw = bytes(message)
        ours, fast = type(message).parse(raw), decoder(type(message))(raw)
        same = ours == fast and repr(ours) == repr(fast)
        print(
            f"{type(message).__name__} ({len(raw):,} bytes): {'identical' if same else 'DIFFERENT'}"
        )
    raw = bytes(messages[-1])
    for name, parse in (
        ("betterproto2", ListMicrogridDispatchesResponse.parse),
        ("upb + build", decoder(ListMicrogridDispatchesResponse)),
    ):
        times = []
        for _ in range(5):
            gc.collect()
            start = time.process_time()
            parse(raw)
            times.append(time.process_time() - start)
        print(f"{name}: {1000 * sorted(times)[2]:.1f} ms CPU (median of 5) for 1,000 dispatches")


if __name__ == "__main__":
    main()
