"""Functions copying between upb messages and betterproto2's, written per message class.

The fast codec (`_fastdecode`) parses and serializes through upb; these
functions move the values across. For each message class one function is
generated from the betterproto2 field metadata and the upb descriptor (fields
matched by number) and compiled, once: a conversion (upb -> betterproto2,
`converters`) reads the upb message's attributes and sets on a new instance
exactly what the dataclass `__init__` and `__post_init__` would set, in the
same order, without running them; a fill (betterproto2 -> upb, `fillers`) sets
what `bytes(message)` would write. A message part's function is written on its
first call, so parts that never occur cost nothing.
"""

from __future__ import annotations

import datetime as dt
import keyword
import threading
from collections.abc import Callable
from typing import Any

import betterproto2

from ._proto.google.protobuf import Timestamp

__all__ = ["Converters", "Fallback", "Fillers", "SourceCompiler", "converters", "fillers"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class _EnumLookup(dict[int, Any]):
    """value -> enum member; values the enum does not know become its unknown members."""

    def __init__(self, enum_cls: type[betterproto2.Enum]) -> None:
        super().__init__((member.value, member) for member in enum_cls)
        self.enum_cls = enum_cls

    def __missing__(self, value: int) -> Any:
        return self.enum_cls(value)


class SourceCompiler:
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
            Fallback: `cls` cannot take the fast path at all (the subclass says why).
        """
        with self._lock:
            function = self._compiled(self._ref(cls, descriptor))
        if function is fall_back:
            raise Fallback(cls.__qualname__)
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
            part = self._uncompiled.get(name)
            if part is not None:
                cls, descriptor = part
                try:
                    source = self._source(name, cls, descriptor)
                    code = compile(source, f"<{__name__} {self._label}>", "exec")
                except Exception as exc:
                    # Every later call falls back at once, as this one does; and
                    # whatever failed (not only a `Fallback`), the part's name must
                    # not stay bound to the stub calling this: it would recurse.
                    self._namespace[name] = fall_back
                    del self._uncompiled[name]
                    if isinstance(exc, Fallback):
                        raise
                    raise Fallback(f"{cls.__qualname__}: {exc!r}") from exc
                exec(code, self._namespace)
                # Only now: interrupted before (KeyboardInterrupt), a later call writes it.
                del self._uncompiled[name]
            return self._namespace[name]  # type: ignore[no-any-return]

    def _source(self, name: str, cls: type[Any], descriptor: Any) -> str:  # pragma: no cover
        raise NotImplementedError

    def _global(self, prefix: str, value: Any) -> str:
        name = f"_{prefix}{len(self._namespace)}"
        self._namespace[name] = value
        return name


class Fallback(Exception):
    """A message the upb copy might not encode exactly as betterproto2: encode it there."""


def fall_back(*args: Any) -> None:
    raise Fallback


class Converters(SourceCompiler):
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


converters = Converters()


_SCALAR_TYPES: dict[str, str] = {
    betterproto2.TYPE_BOOL: "_bool",
    betterproto2.TYPE_STRING: "_str",
    betterproto2.TYPE_BYTES: "_bytes",
    betterproto2.TYPE_DOUBLE: "_float",
    betterproto2.TYPE_FLOAT: "_float",
}


class Fillers(SourceCompiler):
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
                "Fallback": Fallback,
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
            raise Fallback(cls.__qualname__)
        fields_by_number = {field.number: field for field in descriptor.fields}
        lines = [f"def {name}(o, m):", "    if o._unknown_fields:", "        raise Fallback"]
        groups: dict[str, str] = {}
        for field_name, field_meta in meta.meta_by_field_name.items():
            field = fields_by_number.get(field_meta.number)
            if field is None:
                raise Fallback(f"{cls.__qualname__}.{field_name}")
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
                lines.append("            raise Fallback")
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
                    raise Fallback(field_name)
                fill = self._ref(cls, field.message_type)
                return [
                    f"r = {attribute}",
                    "for x in v:",
                    f"    if type(x) is not {self._global('cls', cls)}:",
                    "        raise Fallback",
                    f"    {fill}(x, r.add())",
                ]
            return [
                "for x in v:",
                *(f"    {line}" for line in self._check(field_meta, "x")),
                f"{attribute}.extend(v)",
            ]
        return self._assign(field_meta, cls, field, "m", field.name, "v")

    def _check(self, field_meta: Any, var: str) -> list[str]:
        """Lines raising `Fallback` unless `var` has a type betterproto2 writes as upb does."""
        if field_meta.proto_type == betterproto2.TYPE_ENUM:
            return [f"if not isinstance({var}, int) or type({var}) is bool:", "    raise Fallback"]
        types = _SCALAR_TYPES.get(field_meta.proto_type, "_int")
        check = f"type({var}) not in {types}"
        if types == "_float":
            check = f"{check} or type({var}) is bool"
        return [f"if {check}:", "    raise Fallback"]

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
                "    raise Fallback",
                f"s = {attribute}",
                "s.SetInParent()",
                f"{fill}({var}, s)",
            ]
        if field_meta.proto_type == betterproto2.TYPE_ENUM:
            return [*self._check(field_meta, var), f"{attribute} = int({var})"]
        return [*self._check(field_meta, var), f"{attribute} = {var}"]


fillers = Fillers()
