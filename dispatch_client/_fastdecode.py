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
- Values cross between upb and the generated classes through functions
  written per message class (`_upb_source`).
- A message is parsed by betterproto2 instead whenever the fast path could
  differ: when the input is not byte for byte upb's canonical encoding of the
  known fields it parsed (unknown fields, which betterproto2 keeps as raw
  bytes; a field repeated on the wire, which upb merges and betterproto2
  replaces; defaults written out), and when upb or the conversion fails, so
  errors are betterproto2's own.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, Generic, TypeVar

import betterproto2
from grpclib.encoding.proto import ProtoCodec

from ._proto.message_pool import default_message_pool
from ._upb_source import Fallback, converters, fillers

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
        self._convert: Callable[[Any], _M] = converters.function(cls, descriptor)

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
    except (KeyError, Fallback):
        _log.debug("encoding %s with betterproto2", cls.__qualname__)
        return bytes


class Encoder(Generic[_M]):
    """Serializes one generated message class: through upb, or betterproto2 where it must."""

    def __init__(self, cls: type[_M], descriptor: Any) -> None:
        self.message_type = cls
        self._new_upb = _message_class(descriptor)
        self._fill: Callable[[Any, Any], None] = fillers.function(cls, descriptor)

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
