"""What `import dispatch_client` loads in a fresh interpreter (the bench's cold-import row).

The floor is the generated model (betterproto2, which also loads grpclib's
client and server, dateutil's parser and importlib.metadata for its own version)
plus grpclib's client: the package must add nothing outside itself on top of
that, and everything a unary client does not need loads on first use.
"""

from __future__ import annotations

import json
import textwrap

from fresh_python import run_python

import dispatch_client
import dispatch_client.wire

# Loaded only when used: the server and CLI, the stream and schedule helpers,
# the fast path's protobuf runtime, the signing digests, the trio bridge.
DEFERRED = (
    "anyio",
    "asyncclick",
    "dateutil.rrule",
    "google.protobuf",
    "hashlib",
    "hmac",
    "prompt_toolkit",
    "secrets",
    "sqlite3",
    "trio",
    *(
        f"dispatch_client.{m}"
        for m in (
            "_fanout",
            "_reconnect",
            "_shared_stream",
            "_tasks",
            "_trio",
            "cli",
            "execution",
            "ical",
            "recurrence",
            "schedule",
            "server",
            "streaming",
            "testing",
            "watchview",
            "wire",
        )
    ),
)

# The generated model without the package's __init__: a stand-in package
# object lets its modules import by their real names.
_FLOOR = """
import importlib.util, sys, types
spec = importlib.util.find_spec("dispatch_client")
package = types.ModuleType("dispatch_client")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["dispatch_client"] = package
import dispatch_client._proto.frequenz.api.dispatch.v1
import dispatch_client._proto.frequenz.api.common.v1alpha8.streaming
import grpclib.client
"""


def _modules_after(program: str) -> set[str]:
    code = textwrap.dedent(program) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    loaded: list[str] = json.loads(run_python(code).splitlines()[-1])
    return set(loaded)


def test_import_loads_no_deferred_module() -> None:
    loaded = _modules_after("import dispatch_client")
    assert sorted(loaded & set(DEFERRED)) == []


def test_import_adds_nothing_outside_the_package_to_the_generated_model() -> None:
    floor = _modules_after(_FLOOR)
    full = _modules_after("import dispatch_client")
    # gc is built into the interpreter: importing it costs nothing.
    added = {m for m in full - floor if not m.startswith("dispatch_client")} - {"gc"}
    assert sorted(added) == []


def test_every_public_name_resolves_from_a_cold_import() -> None:
    program = """
        import dispatch_client, dispatch_client.wire
        from dispatch_client import *
        missing = [n for n in dispatch_client.__all__ if n not in globals()]
        missing += [n for n in dispatch_client.__all__ if n not in dir(dispatch_client)]
        missing += [
            n for n in dispatch_client.wire.__all__ if getattr(dispatch_client.wire, n) is None
        ]
        print(missing)
    """
    assert run_python(program) == "[]"


def test_the_deferred_list_names_real_modules() -> None:
    # A misspelt entry would pass the first test forever: every package module
    # named must exist (third-party ones may be absent without their extra).
    from importlib.util import find_spec

    ours = [m for m in DEFERRED if m.startswith("dispatch_client.")]
    assert [m for m in ours if find_spec(m) is None] == []
    assert dispatch_client.wire.MicrogridDispatchServiceBase is not None
