"""Print a results file as the Markdown table the README shows.

python -m bench.table [bench/results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .run import RAW, ROOT, _cell, _fmt_ratio


def markdown(result: dict[str, Any]) -> str:
    """The table of a results file: one row per metric, with the raw-stack columns."""
    lines = [
        "| metric | ours | official | ratio | raw | raw/ours |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["metrics"]:
        label = f"{row['label']} ({row['unit']})" + ("" if row["core"] else " \\*")
        raw = [_cell(row[RAW]), _fmt_ratio(row["ratio_raw"])] if RAW in row else ["", ""]
        cells = [label, _cell(row["ours"]), _cell(row["official"]), _fmt_ratio(row["ratio"]), *raw]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results.json"
    print(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
