"""The committed generated code must be exactly what `make protos` produces."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "dispatch_client" / "_proto"


def _tree(path: Path) -> set[str]:
    return {
        str(p.relative_to(path))
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
        check=True,
        env=env,
        capture_output=True,
    )
    fresh, committed = _tree(out), _tree(COMMITTED)
    assert fresh == committed, (
        f"files differ: only fresh {fresh - committed}, only committed {committed - fresh}"
    )
    stale = [
        name
        for name in sorted(fresh)
        if not filecmp.cmp(out / name, COMMITTED / name, shallow=False)
    ]
    assert not stale, f"run `make protos`: generated code is stale in {stale}"


def test_package_exposes_generated_messages() -> None:
    import dispatch_client
    from dispatch_client._proto.frequenz.api.dispatch.v1 import Dispatch

    assert dispatch_client.Dispatch is Dispatch
