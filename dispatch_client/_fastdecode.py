"""Optional fast decoding of responses: upb parses, the generated messages come out.

betterproto2 parses the protobuf wire format in pure Python, at roughly 200 µs
per dispatch, which made decoding most of a list's client CPU. With the `fast`
extra (`protobuf`, whose default backend is the upb C library) responses are
parsed by upb instead, and the very same generated betterproto2 dataclasses are
built from the parsed message: callers cannot tell the two paths apart (`==`
and `repr` agree). `DISPATCH_CLIENT_FAST_DECODE=0` turns the fast path off;
without protobuf it is off anyway.

- Descriptors come from `_proto/fast_descriptors.binpb`, written by `make
  protos` from `protos/`, and go into a private descriptor pool, so nothing
  clashes with other `*_pb2` modules an application loads (the official API
  package, say). There, map entries are plain repeated messages: the wire
  format is the same, but upb then keeps the entries in wire order, so a
  payload's keys come out in the order betterproto2 gives them (upb's maps are
  hash tables).
- For each message class one conversion function is generated, once, from the
  betterproto2 field metadata and the upb descriptors (matched by field
  number). It reads the upb message's attributes and sets on a new instance
  exactly what the dataclass `__init__` and `__post_init__` would set, in the
  same order, without running them.
- A message is parsed by betterproto2 instead whenever the fast path could
  differ: when the input is not byte for byte upb's canonical encoding of the
  known fields it parsed (unknown fields, which betterproto2 keeps as raw
  bytes; a field repeated on the wire, which upb merges and betterproto2
  replaces; defaults written out), and when upb or the conversion fails, so
  errors are betterproto2's own.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import keyword
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, Generic, TypeVar

import betterproto2
from grpclib.encoding.proto import ProtoCodec

from ._proto.google.protobuf import Timestamp
from ._proto.message_pool import default_message_pool

__all__ = [
    "ENV_VAR",
    "Decoder",
    "Encoder",
    "ResponseCodec",
    "available",
    "decoder",
    "enabled",
    "encoder",
]

_log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=betterproto2.Message)

ENV_VAR = "DISPATCH_CLIENT_FAST_DECODE"
"""Set to 0 (or false, no, off) to decode with betterproto2 only; read when a channel opens."""

GC_PAUSE_BYTES = 64 * 1024
"""Messages at least this big are converted with the cyclic GC paused (a list page is ~160 KB)."""

_OFF = frozenset({"0", "false", "no", "off"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TYPE_URL_PREFIX = "type.googleapis.com/"


@functools.cache
def available() -> bool:
    """Whether protobuf with its upb backend is installed (the `fast` extra)."""
    try:
        from google.protobuf.internal import api_implementation
    except ImportError:
        return False
    # The gain is parsing in C; with the pure-Python backend there is none.
    return bool(api_implementation.Type() == "upb")


def enabled() -> bool:
    """Whether new codecs decode through upb: available and not turned off by `ENV_VAR`."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in _OFF and available()


class ResponseCodec(ProtoCodec):
    """grpclib's protobuf codec, through upb when the fast path is on.

    Responses are parsed by upb (see `Decoder`); requests are copied into upb
    messages and serialized there (see `encoder`), yielding the very bytes
    betterproto2 writes. `fast=None` follows `enabled()`; `fast=True`
    requires protobuf's upb backend.
    """

    def __init__(self, *, fast: bool | None = None) -> None:
        if fast is None:
            fast = enabled()
        elif fast and not available():
            raise RuntimeError(
                "fast decoding needs protobuf with its upb backend: "
                "pip install 'dispatch-client[fast]'"
            )
        self.fast = fast

    def __repr__(self) -> str:
        return f"ResponseCodec(fast={self.fast})"

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        """Parse `data` into an instance of the generated message class `message_type`."""
        if self.fast:
            return decoder(message_type)(data)
        return message_type.parse(data)

    def encode(self, message: Any, message_type: type[Any]) -> bytes:
        """Serialize `message`, an instance of `message_type`, as betterproto2 would."""
        if not isinstance(message, message_type):
            raise TypeError(f"Message must be of type {message_type!r}, not {type(message)!r}")
        if self.fast:
            return encoder(message_type)(message)
        return bytes(message)


# -- decoders ------------------------------------------------------------------


class Decoder(Generic[_M]):
    """Parses bytes into one generated message class: through upb, or betterproto2 where it must."""

    def __init__(self, cls: type[_M], descriptor: Any) -> None:
        self.message_type = cls
        self._parse_upb = _message_class(descriptor).FromString
        self._convert: Callable[[Any], _M] = _converters.function(cls, descriptor)

    def __repr__(self) -> str:
        return f"Decoder({self.message_type.__qualname__})"

    def __call__(self, data: bytes) -> _M:
        """Return `data` parsed, the same as `message_type.parse(data)` gives."""
        message = self.parse_fast(data)
        return self.message_type.parse(data) if message is None else message

    def parse_fast(self, data: bytes) -> _M | None:
        """Return `data` parsed through upb, or None if only betterproto2 gets it exactly right."""
        try:
            message = self._parse_upb(data)
            # Once unknown fields are dropped, upb re-encodes canonically what
            # it kept; only if that gives back the input is nothing lost that
            # betterproto2 would have kept or read differently.
            message.DiscardUnknownFields()
            if message.SerializeToString() != data:
                return None
            with _gc_paused(len(data)):
                return self._convert(message)
        except Exception:
            # Malformed input, a value the conversion cannot take: betterproto2
            # decides, so it raises its own errors.
            return None


_decoders: dict[type[Any], Callable[[bytes], Any]] = {}
_decoders_lock = threading.Lock()  # a trio app's client runs grpclib in a thread of its own


def decoder(cls: type[_M]) -> Callable[[bytes], _M]:
    """Return the function parsing bytes into `cls`: a `Decoder`, or `cls.parse` for others.

    Needs protobuf's upb backend (see `available()`).
    """
    try:
        return _decoders[cls]
    except KeyError:
        pass
    with _decoders_lock:
        if cls not in _decoders:
            _decoders[cls] = _make_decoder(cls)
        return _decoders[cls]


def _make_decoder(cls: type[_M]) -> Callable[[bytes], _M]:
    url = default_message_pool.type_to_url.get(cls, "")
    try:
        descriptor = _pool().FindMessageTypeByName(url.removeprefix(_TYPE_URL_PREFIX))
    except KeyError:
        # Not one of our generated messages: nothing to speed up.
        _log.debug("no descriptor for %s; decoding it with betterproto2", cls.__qualname__)
        return cls.parse
    return Decoder(cls, descriptor)


@contextmanager
def _gc_paused(size: int) -> Iterator[None]:
    """Pause the cyclic GC while a big message is converted.

    A list page becomes tens of thousands of young objects with no cycles
    among them; collections during the conversion only traverse them again
    and again (a quarter of the time). One pass afterwards is enough. The
    pause is process-wide but lasts only the milliseconds of one conversion.
    """
    if size < GC_PAUSE_BYTES or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@functools.cache
def _pool() -> Any:
    """Our descriptors in a private upb pool, map entries plain (see `_proto/fast_descriptors.binpb`).

    upb's own pool and message classes, as protobuf's `descriptor_pool` and
    `message_factory` make them under the upb backend (which `available()`
    requires), without importing those modules and `descriptor_pb2`: that
    import chain cost ~20 ms of a client's first call.
    """
    from google._upb import _message

    data = resources.files("dispatch_client._proto").joinpath("fast_descriptors.binpb").read_bytes()
    pool = _message.DescriptorPool()
    for file in _set_members(data):
        pool.AddSerializedFile(file)
    return pool


def _set_members(data: bytes) -> Iterator[bytes]:
    """Yield the serialized files of a serialized `FileDescriptorSet` (its field 1, repeated).

    Raises:
        ValueError: `data` holds anything else, or is cut short.
    """
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        size, at = _varint(data, at)
        if tag != _FILE_TAG or at + size > len(data):
            raise ValueError(f"not a serialized FileDescriptorSet (at byte {at})")
        yield data[at : at + size]
        at += size


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise ValueError(f"not a serialized FileDescriptorSet (a varint cut short at byte {at})")


_FILE_TAG = 1 << 3 | 2  # FileDescriptorSet.file: field 1, length-delimited


def _message_class(descriptor: Any) -> Any:
    """Return upb's message class for `descriptor` (upb keeps one per descriptor)."""
    from google._upb import _message
    from google.protobuf import message

    return _message.MessageMeta(
        descriptor.name, (message.Message,), {"DESCRIPTOR": descriptor, "__module__": None}
    )


# -- conversion functions --------------------------------------------------------


class _EnumLookup(dict[int, Any]):
    """value -> enum member; values the enum does not know become its unknown members."""

    def __init__(self, enum_cls: type[betterproto2.Enum]) -> None:
        super().__init__((member.value, member) for member in enum_cls)
        self.enum_cls = enum_cls

    def __missing__(self, value: int) -> Any:
        return self.enum_cls(value)


class _SourceCompiler:
    """Writes Python source per message class and compiles it into one namespace.

    Subclasses give a label, a name prefix and the namespace, and implement
    `_source(name, cls, descriptor)`: the source of function `name` for `cls`,
    naming the functions of its parts through `_ref`. A part's function is
    written and compiled on its first call, so a message whose parts never
    occur (an empty list page, a request without a filter) does not pay for
    them: that is most of a client's first call.
    """

    def __init__(self, label: str, prefix: str, namespace: dict[str, Any]) -> None:
        self._label = label
        self._prefix = prefix
        self._namespace = namespace
        self._names: dict[type[Any], str] = {}
        self._uncompiled: dict[str, tuple[type[Any], Any]] = {}
        # Reentrant: writing one function names its parts under the same lock.
        # A lock at all: a trio app's client runs grpclib in a thread of its own.
        self._lock = threading.RLock()

    def function(self, cls: type[Any], descriptor: Any) -> Callable[..., Any]:
        """Return the function for `cls`, compiled now (the functions of its parts on first use).

        Raises:
            _Fallback: `cls` cannot take the fast path at all (the subclass says why).
        """
        with self._lock:
            function = self._compiled(self._ref(cls, descriptor))
        if function is _fall_back:
            raise _Fallback(cls.__qualname__)
        return function

    def _ref(self, cls: type[Any], descriptor: Any) -> str:
        """Return the name of the function for `cls`; until compiled, it compiles on its first call."""
        name = self._names.get(cls)
        if name is None:
            name = self._names[cls] = f"{self._prefix}{len(self._names)}_{cls.__name__}"
            self._uncompiled[name] = (cls, descriptor)

            def compile_on_first_call(*args: Any) -> Any:
                return self._compiled(name)(*args)

            self._namespace[name] = compile_on_first_call
        return name

    def _compiled(self, name: str) -> Callable[..., Any]:
        with self._lock:
            if name in self._uncompiled:
                cls, descriptor = self._uncompiled.pop(name)
                try:
                    source = self._source(name, cls, descriptor)
                except _Fallback:
                    # Every later call falls back at once, as this one does.
                    self._namespace[name] = _fall_back
                    raise
                exec(compile(source, f"<{__name__} {self._label}>", "exec"), self._namespace)
            return self._namespace[name]  # type: ignore[no-any-return]

    def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:  # pragma: no cover
        raise NotImplementedError

    def _global(self, prefix: str, value: Any) -> str:
        name = f"_{prefix}{len(self._namespace)}"
        self._namespace[name] = value
        return name


class _Fallback(Exception):
    """A message the upb copy might not encode exactly as betterproto2: encode it there."""


def _fall_back(*args: Any) -> None:
    raise _Fallback


class _Converters(_SourceCompiler):
    """Generates one specialised conversion function per message class.

    Each function reads the attributes of the upb message directly (no
    generic loop over fields) and sets them, converted, on an instance made
    with `object.__new__`: in dataclass field order and then `_unknown_fields`,
    as `__init__` and `__post_init__` do, so instances share their class's
    key table and stay as small as betterproto2's own.
    """

    def __init__(self) -> None:
        super().__init__(
            "conversions",
            "_from_upb_",
            {"_new": object.__new__, "_EPOCH": _EPOCH, "_timedelta": dt.timedelta},
        )

    def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:
        meta = cls._betterproto
        fields_by_number = {field.number: field for field in descriptor.fields}
        lines = [f"def {name}(m):", f"    o = _new({self._global('cls', cls)})"]
        oneofs: dict[str, list[tuple[str, str]]] = {}
        for field_name, field_meta in meta.meta_by_field_name.items():
            field = fields_by_number[field_meta.number]
            if field_meta.group:
                # One WhichOneof() per oneof, rather than a HasField() per member.
                lines.append(f"    o.{field_name} = None")
                value = self._single(field_meta, meta.cls_by_field[field_name], field, "v")
                oneofs.setdefault(field.containing_oneof.name, []).append(
                    (field.name, f"o.{field_name} = {value}")
                )
            else:
                lines.append(f"    o.{field_name} = {self._field(meta, field_name, field)}")
        lines.append('    o._unknown_fields = b""')
        for oneof, branches in oneofs.items():
            lines.append(f"    k = m.WhichOneof({oneof!r})")
            for index, (proto_name, assignment) in enumerate(branches):
                keyword_ = "if" if index == 0 else "elif"
                lines.append(f"    {keyword_} k == {proto_name!r}:")
                lines.append(f"        v = {_attribute('m', proto_name)}")
                lines.append(f"        {assignment}")
        lines.append("    return o")
        return "\n".join(lines)

    def _field(self, meta: Any, field_name: str, field: Any) -> str:
        """Return the expression for a field outside any oneof, read from the upb message `m`."""
        field_meta = meta.meta_by_field_name[field_name]
        attribute = _attribute("m", field.name)
        if field_meta.proto_type == betterproto2.TYPE_MAP:
            # A repeated entry message in our pool, so in wire order; later
            # duplicates win, as in betterproto2.
            value_meta = field_meta.map_meta[1]
            value = self._single(
                value_meta,
                meta.cls_by_field.get(f"{field_name}.value"),
                field.message_type.fields_by_name["value"],
                "e.value",
            )
            if value_meta.proto_type == betterproto2.TYPE_MESSAGE:
                value = f'({value} if e.HasField("value") else None)'
            return f"{{e.key: {value} for e in {attribute}}}"
        if field_meta.repeated:
            value = self._single(field_meta, meta.cls_by_field[field_name], field, "x")
            return f"list({attribute})" if value == "x" else f"[{value} for x in {attribute}]"
        value = self._single(field_meta, meta.cls_by_field[field_name], field, attribute)
        if field_meta.proto_type == betterproto2.TYPE_MESSAGE or field_meta.optional:
            return f"({value} if m.HasField({field.name!r}) else None)"
        return value

    def _single(self, field_meta: Any, cls: type[Any] | None, field: Any, var: str) -> str:
        """Return the expression converting one upb value `var` of a field."""
        if field_meta.proto_type == betterproto2.TYPE_MESSAGE:
            if field_meta.unwrap is not None:
                wrapper = field_meta.unwrap()
                if wrapper is Timestamp:
                    # Timestamp.to_datetime()'s own arithmetic, without the Timestamp;
                    # the upb sub-message read once, the timedelta's arguments by position.
                    return f"_EPOCH + _timedelta(0, (_t := {var}).seconds, _t.nanos // 1000)"
                return f"{self._ref(wrapper, field.message_type)}({var}).to_wrapped()"
            assert cls is not None
            return f"{self._ref(cls, field.message_type)}({var})"
        if field_meta.proto_type == betterproto2.TYPE_ENUM:
            assert cls is not None
            return f"{self._global('enum', _EnumLookup(cls))}[{var}]"
        return var


def _attribute(var: str, name: str) -> str:
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{var}.{name}"
    return f"getattr({var}, {name!r})"


_converters = _Converters()


# -- encoders ------------------------------------------------------------------


_encoders: dict[type[Any], Callable[[Any], bytes]] = {}


def encoder(cls: type[_M]) -> Callable[[_M], bytes]:
    """Return the function serializing instances of `cls`: through upb, else `bytes`.

    The upb path writes exactly what `bytes(message)` gives (fields in number
    order, defaults left out, presence as betterproto2 has it); any message it
    could get wrong (unknown fields, two members of a oneof set, a value of an
    unexpected type or out of range) goes to betterproto2, which then also
    raises its own errors. Needs protobuf's upb backend (see `available()`).
    """
    try:
        return _encoders[cls]
    except KeyError:
        pass
    with _decoders_lock:
        if cls not in _encoders:
            _encoders[cls] = _make_encoder(cls)
        return _encoders[cls]


def _make_encoder(cls: type[_M]) -> Callable[[_M], bytes]:
    url = default_message_pool.type_to_url.get(cls, "")
    try:
        descriptor = _pool().FindMessageTypeByName(url.removeprefix(_TYPE_URL_PREFIX))
        return Encoder(cls, descriptor)
    except (KeyError, _Fallback):
        _log.debug("encoding %s with betterproto2", cls.__qualname__)
        return bytes


class Encoder(Generic[_M]):
    """Serializes one generated message class: through upb, or betterproto2 where it must."""

    def __init__(self, cls: type[_M], descriptor: Any) -> None:
        self.message_type = cls
        self._new_upb = _message_class(descriptor)
        self._fill: Callable[[Any, Any], None] = _fillers.function(cls, descriptor)

    def __repr__(self) -> str:
        return f"Encoder({self.message_type.__qualname__})"

    def __call__(self, message: _M) -> bytes:
        """Return `message` serialized, the same bytes as `bytes(message)`."""
        data = self.encode_fast(message)
        return bytes(message) if data is None else data

    def encode_fast(self, message: _M) -> bytes | None:
        """Return `message` serialized through upb, or None if only betterproto2 gets it right."""
        try:
            upb = self._new_upb()
            self._fill(message, upb)
            return upb.SerializeToString()  # type: ignore[no-any-return]
        except Exception:
            # A value upb would refuse or convert: betterproto2 writes it (or raises).
            return None


_SCALAR_TYPES: dict[str, str] = {
    betterproto2.TYPE_BOOL: "_bool",
    betterproto2.TYPE_STRING: "_str",
    betterproto2.TYPE_BYTES: "_bytes",
    betterproto2.TYPE_DOUBLE: "_float",
    betterproto2.TYPE_FLOAT: "_float",
}


class _Fillers(_SourceCompiler):
    """Generates one function per message class copying a betterproto2 message into upb.

    `fill(o, m)` sets on the upb message `m` what `bytes(o)` would write:
    fields that are None or equal their default are skipped (as betterproto2
    skips them), every other one is set, so upb writes it; sub-messages are
    marked present even when empty. Values are checked to be of the exact
    type betterproto2 writes (upb would convert others, writing other bytes);
    anything else raises, and the caller encodes with betterproto2.
    """

    def __init__(self) -> None:
        super().__init__(
            "fillers",
            "_to_upb_",
            {
                "_Fallback": _Fallback,
                "_bool": (bool,),
                "_str": (str,),
                "_bytes": (bytes,),
                "_float": (float, int),
                "_int": (int,),
            },
        )

    def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:
        meta = cls._betterproto
        numbers = [field.number for field in meta.meta_by_field_name.values()]
        if numbers != sorted(numbers):
            # betterproto2 writes fields in declaration order, upb in number order.
            raise _Fallback(cls.__qualname__)
        fields_by_number = {field.number: field for field in descriptor.fields}
        lines = [f"def {name}(o, m):", "    if o._unknown_fields:", "        raise _Fallback"]
        groups: dict[str, str] = {}
        for field_name, field_meta in meta.meta_by_field_name.items():
            field = fields_by_number.get(field_meta.number)
            if field is None:
                raise _Fallback(f"{cls.__qualname__}.{field_name}")
            default = meta.default_gen[field_name]()
            lines.append(f"    v = o.{field_name}")
            if default is None:
                lines.append("    if v is not None:")
            else:
                lines.append(f"    if v is not None and v != {self._global('d', default)}:")
            if field_meta.group:
                flag = groups.setdefault(field_meta.group, f"g{len(groups)}")
                lines.insert(1, f"    {flag} = False")
                lines.append(f"        if {flag}:")
                lines.append("            raise _Fallback")
                lines.append(f"        {flag} = True")
            lines.extend(f"        {line}" for line in self._set(meta, field_name, field))
        lines.append("    return None")
        return "\n".join(lines)

    def _set(self, meta: Any, field_name: str, field: Any) -> list[str]:
        """Return the lines setting field `field` of `m` from the value `v`."""
        field_meta = meta.meta_by_field_name[field_name]
        attribute = _attribute("m", field.name)
        if field_meta.proto_type == betterproto2.TYPE_MAP:
            key_meta, value_meta = field_meta.map_meta
            entry = field.message_type
            lines = ["for k, x in v.items():", f"    e = {attribute}.add()"]
            lines += [f"    {line}" for line in self._check(key_meta, "k")]
            lines.append("    e.key = k")
            value_cls = meta.cls_by_field.get(f"{field_name}.value")
            lines += [
                f"    {line}"
                for line in self._assign(
                    value_meta, value_cls, entry.fields_by_name["value"], "e", "value", "x"
                )
            ]
            return lines
        cls = meta.cls_by_field.get(field_name)
        if field_meta.repeated:
            if field_meta.proto_type == betterproto2.TYPE_MESSAGE:
                if field_meta.unwrap is not None:
                    raise _Fallback(field_name)
                fill = self._ref(cls, field.message_type)
                return [
                    f"r = {attribute}",
                    "for x in v:",
                    f"    if type(x) is not {self._global('cls', cls)}:",
                    "        raise _Fallback",
                    f"    {fill}(x, r.add())",
                ]
            return [
                "for x in v:",
                *(f"    {line}" for line in self._check(field_meta, "x")),
                f"{attribute}.extend(v)",
            ]
        return self._assign(field_meta, cls, field, "m", field.name, "v")

    def _check(self, field_meta: Any, var: str) -> list[str]:
        """Lines raising `_Fallback` unless `var` has a type betterproto2 writes as upb does."""
        if field_meta.proto_type == betterproto2.TYPE_ENUM:
            return [f"if not isinstance({var}, int) or type({var}) is bool:", "    raise _Fallback"]
        types = _SCALAR_TYPES.get(field_meta.proto_type, "_int")
        check = f"type({var}) not in {types}"
        if types == "_float":
            check = f"{check} or type({var}) is bool"
        return [f"if {check}:", "    raise _Fallback"]

    def _assign(
        self, field_meta: Any, cls: type[Any] | None, field: Any, owner: str, name: str, var: str
    ) -> list[str]:
        """Lines setting the single field `name` of upb message `owner` from `var`."""
        attribute = _attribute(owner, name)
        if field_meta.proto_type == betterproto2.TYPE_MESSAGE:
            lines = []
            if field_meta.unwrap is not None:
                wrapper = field_meta.unwrap()
                lines.append(f"{var} = {self._global('wrap', wrapper.from_wrapped)}({var})")
                cls = wrapper
            assert cls is not None
            fill = self._ref(cls, field.message_type)
            return [
                *lines,
                f"if type({var}) is not {self._global('cls', cls)}:",
                "    raise _Fallback",
                f"s = {attribute}",
                "s.SetInParent()",
                f"{fill}({var}, s)",
            ]
        if field_meta.proto_type == betterproto2.TYPE_ENUM:
            return [*self._check(field_meta, var), f"{attribute} = int({var})"]
        return [*self._check(field_meta, var), f"{attribute} = {var}"]


_fillers = _Fillers()
