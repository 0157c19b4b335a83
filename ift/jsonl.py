"""The one JSONL reader (results store and analysis alike), and its rule for a torn line.

A job killed mid-write can leave its last line torn (no newline, invalid JSON): that line is dropped with a
warning, since the step it held was never reported done. A torn line anywhere else is not a kill but a
damaged file, and raises (ValueError naming the file and line) rather than silently losing the rows after it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def parse_jsonl(text: str, source: str = "JSONL") -> list[dict]:
    """The rows of JSONL `text` (blank lines skipped); `source` names the file in the warning and the error."""
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for k, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if k != len(lines) - 1:
                raise ValueError(f"{source}: line {number} is not valid JSON ({err.msg}) and is not the last "
                                 "line, so it is damage, not a killed writer") from None
            log.warning("%s: dropping its torn last line %d (a writer killed mid-line)", source, number)
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """`parse_jsonl` of a file; a missing file has no rows."""
    path = Path(path)
    if not path.exists():
        return []
    return parse_jsonl(path.read_text(), str(path))
