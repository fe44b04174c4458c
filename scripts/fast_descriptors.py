"""Write the descriptors the fast codec loads: `descriptors.binpb` with map entries made plain.

    python scripts/fast_descriptors.py IN.binpb OUT.binpb

Run by `scripts/gen_protos.sh` (so by `make protos`). The fast codec
(`dispatch_client/_fastdecode.py`) puts these into a private upb pool. There a
map field is a plain repeated entry message (same wire format), so upb keeps
entries in wire order and a payload's keys come out in the order betterproto2
gives them; upb's own maps are hash tables. Done here rather than at run time
because reading and rewriting descriptors needs `descriptor_pb2`, whose import
and parse cost a client ~15 ms on its first call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2


def _plain_map_entries(messages: Any) -> None:
    for message in messages:
        if message.options.map_entry:
            message.options.ClearField("map_entry")
            # Encoders write an entry's key even when empty (betterproto2 and Go
            # do); with explicit presence upb writes it back, so such input
            # still counts as canonical.
            for field in message.field:
                if field.type != field.TYPE_MESSAGE:
                    field.proto3_optional = True
                    field.oneof_index = len(message.oneof_decl)
                    message.oneof_decl.add(name=f"_{field.name}")
        _plain_map_entries(message.nested_type)


def main(source: Path, target: Path) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(source.read_bytes())
    for file in files.file:
        _plain_map_entries(file.message_type)
    target.write_bytes(files.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
