"""hpack's encoder and decoder, reusing header blocks made only of table references.

grpclib sends the same headers for every call of a
method (the deadline header included: `grpc-timeout` is whole seconds above
10 s). hpack encodes them by searching its tables for each one on every call;
`CachingEncoder` keeps a block made only of references to table entries,
which encodes the same while the dynamic table is unchanged. The per-call
signature headers (`ts`, `nonce`, `sig`) are sent as never-indexed literals
(RFC 7541, section 7.1.3): they would only churn the table, and `sig` is a
credential that should not be kept in a compression context.
"""

from __future__ import annotations

from typing import Any, Final, cast

from h2.connection import _decode_headers
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.table import HeaderTable


class _CountingTable(HeaderTable):
    """hpack's header table, counting every change of its dynamic part."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        base: Any = HeaderTable.maxsize
        base.fset(self, newmax)


class CachingEncoder(Encoder):
    """hpack's encoder, reusing a header block that only refers to table entries.

    A block whose encoding added nothing to the dynamic table is a list of
    indexes; it encodes the same as long as the table is unchanged. Headers
    given as `NeverIndexedHeaderTuple`s at the end of the list are encoded
    after the cached part (they never touch the table).
    """

    _LIMIT: Final = 256
    header_table: _CountingTable

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _CountingTable()
        self._blocks: dict[tuple[Any, ...], tuple[int, bytes]] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized or not isinstance(headers, list):
            return bytes(super().encode(headers, huffman))
        cut = len(headers)
        while cut and isinstance(headers[cut - 1], NeverIndexedHeaderTuple):
            cut -= 1
        key = tuple(headers[:cut])
        generation = table.generation
        cached = self._blocks.get(key)
        if cached is not None and cached[0] == generation:
            block = cached[1]
        else:
            block = bytes(super().encode(headers[:cut], huffman))
            if table.generation == generation:
                if len(self._blocks) >= self._LIMIT:
                    self._blocks.clear()
                self._blocks[key] = (generation, block)
        if cut == len(headers):
            return block
        tail = [self.add((h[0], h[1]), True, huffman) for h in headers[cut:]]
        return block + b"".join(tail)


class CachingDecoder(Decoder):
    """hpack's decoder, remembering what a block of table references decoded to.

    A server answers every call with the same few header blocks (status,
    content type, `grpc-status: 0`), which after the first call are one byte
    per header, each a reference into the tables. A block whose decoding
    changed nothing in the dynamic table decodes the same while the table is
    unchanged, so its result is kept (up to a bound) and returned as a copy.
    """

    _LIMIT: Final = 256
    _LONGEST: Final = 64  # bytes: references only, not literal values
    header_table: _CountingTable

    def __init__(self, replaced: Decoder) -> None:
        """Take over the limits of the decoder it replaces.

        Args:
            replaced: h2's decoder of the connection, not used yet.
        """
        super().__init__(replaced.max_header_list_size)
        self.header_table = _CountingTable()
        self.max_allowed_table_size = replaced.max_allowed_table_size
        self._blocks: dict[tuple[bytes, bool], tuple[int, list[Any]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if len(data) > self._LONGEST:
            return super().decode(data, raw)
        key = (bytes(data), raw)
        generation = self.header_table.generation
        cached = self._blocks.get(key)
        if cached is not None and cached[0] == generation:
            return list(cached[1])
        headers = super().decode(data, raw)
        if self.header_table.generation == generation:
            if len(self._blocks) >= self._LIMIT:
                self._blocks.clear()
            self._blocks[key] = (generation, list(headers))
        return headers


# A decoded header block's key in an `_H2Connection`'s `_texts`: the table's change count and h2's
# limit on a header list's size (changed as settings are acknowledged).
_BlockState = tuple[Any, Any]


def decoded_block(h2: Any, block: bytes) -> tuple[_BlockState, list[Any], list[Any] | None]:
    """A header block's headers as h2 decodes them, and their text if kept from an earlier block.

    A block of table references decodes the same while the table is unchanged
    (see `CachingDecoder`): its headers, as h2 hands them out, are kept with the
    table's change count (`header_text`).
    """
    decoder = h2.decoder
    generation = getattr(decoder.header_table, "generation", None)
    state = (generation, decoder.max_header_list_size)
    cached = h2._texts.get(block)
    if cached is not None and cached[0] == state and generation is not None:
        return state, cached[1], cached[2]
    return state, cast(list[Any], _decode_headers(decoder, block)), None


def header_text(
    h2: Any,
    block: bytes,
    state: _BlockState,
    headers: list[Any],
    text: list[Any] | None,
) -> list[Any]:
    """The headers as h2's events carry them (text in h2's header encoding), kept for the block.

    Kept only if decoding the block left the table as it was (a block that
    adds to the table decodes differently next time).
    """
    if text is None:
        encoding = h2.config.header_encoding
        if isinstance(encoding, str):
            text = [
                header.__class__(header[0].decode(encoding), header[1].decode(encoding))
                for header in headers
            ]
        else:
            text = list(headers)
        generation = state[0]
        if generation is not None and generation == getattr(
            h2.decoder.header_table, "generation", None
        ):
            if len(h2._texts) >= 256:
                h2._texts.clear()
            h2._texts[block] = (state, headers, text)
    return list(text)
