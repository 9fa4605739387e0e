"""Where every bench's figures go: the markdown table on stdout, and the JSON and markdown files asked for."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report(report: dict, md: str, json_out: str | None, md_out: str | None, default: Callable | None = None) -> None:
    print(md)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2, default=default))
    if md_out:
        Path(md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(md_out).write_text(md)
