"""The results store's layout, named once: its file names, its statuses, and the test a finished run must pass.

The launcher (ift/experiment/store.py, hydra_app.py) and the readers (analysis/load.py, analysis/archive.py)
import these names; none of them spells a file name or an ended status itself. This module imports only the
standard library, so analysis reads the store without loading torch or Hydra.

A run is *ended* when meta.json and summary.json agree that it finished or diverged. It is *trusted* only
when its records also agree with each other (`check_ended`): every steps.jsonl line parses, the steps are
1..k once each, k is what the run set out to do (T, or the step early stopping stopped at, or the step it
diverged after), summary.json's last step is k, the checkpoint is at step k, and, for runs finished since
the digest was introduced, steps.jsonl is byte for byte the file summary.json's `steps_sha256` names. Runs
finished before the digest (the committed archives hold thousands) pass on the other checks alone.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
STEPS_FILE = "steps.jsonl"
SUMMARY_FILE = "summary.json"
PREFIX_FILE = "prefix.safetensors"
PREDICTIONS_FILE = "predictions.jsonl"
EFFICIENCY_FILE = "efficiency.jsonl"
ERROR_FILE = "error.txt"
LOCK_FILE = ".lock"
# what a study archive keeps of a job directory (no checkpoint, no predictions)
ARCHIVED_FILES = (CONFIG_FILE, META_FILE, STEPS_FILE, SUMMARY_FILE)
# files whose presence makes a directory a job directory (one without meta.json is damaged, not absent)
JOB_FILES = (META_FILE, STEPS_FILE, SUMMARY_FILE)

FINISHED, DIVERGED, FAILED, RUNNING, INTERRUPTED = "finished", "diverged", "failed", "running", "interrupted"
ENDED = (FINISHED, DIVERGED)  # ran to its end: re-running would change nothing (diverged is a result)
DIGEST_KEY = "steps_sha256"   # summary.json: sha256 of steps.jsonl when the run ended


class StoreDamaged(ValueError):
    """A store file that parses but is not what the layout says (e.g. meta.json holding a list)."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_object(text: str, path) -> dict:
    """`text` (the content of `path`) as a JSON object; StoreDamaged naming the file otherwise."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise StoreDamaged(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise StoreDamaged(f"{path}: expected a JSON object, found {type(data).__name__} (damaged store file; "
                           f"delete the job directory {Path(str(path)).parent} to run the job again)")
    return data


def strict_rows(data: bytes, path) -> list[dict]:
    """Every line of a steps.jsonl as an object; StoreDamaged naming the first bad line (a torn last line too)."""
    if data and not data.endswith(b"\n"):
        raise StoreDamaged(f"{path}: the last line is torn (no newline at its end)")
    rows = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise StoreDamaged(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise StoreDamaged(f"{path}: line {number} is not a step row (an object with an integer step)")
        rows.append(row)
    return rows


def checkpoint_step(path: Path) -> int | None:
    """The step a prefix checkpoint holds, read from its header (no model needed); None if unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return int(json.loads((f.metadata() or {})["ift"])["step"])
    except Exception:  # noqa: BLE001 - torn, foreign or unreadable: the caller says so
        return None


def check_ended(meta: dict, summary: dict, steps: bytes | None, checkpoint: int | None | bool = False) -> str | None:
    """Why an ended run's records disagree (one phrase), or None when they agree.

    `steps`: steps.jsonl's bytes (None: no file); `checkpoint`: the checkpoint's step, None for a checkpoint that
    cannot be read, False when the run has none (archives keep none).
    """
    if meta.get("mode") == "efficiency":
        return None  # no steps: efficiency.jsonl rows are the result
    try:
        rows = strict_rows(steps or b"", STEPS_FILE)
    except StoreDamaged as err:
        return str(err)
    want = summary.get(DIGEST_KEY)
    if want is not None and digest(steps or b"") != want:
        return f"{STEPS_FILE} differs from the one summary.json's digest recorded when the run ended"
    numbers = [r["step"] for r in rows]
    if sorted(numbers) != list(range(1, len(rows) + 1)):
        return f"{STEPS_FILE} holds steps {numbers[:8]}{'...' if len(numbers) > 8 else ''}, not 1..{len(rows)} once each"
    k = len(rows)
    if summary.get("last_step") is not None and summary["last_step"] != k:
        return f"summary.json ends at step {summary['last_step']} but {STEPS_FILE} holds {k} step(s)"
    if meta.get("status") == FINISHED:
        stopped = summary.get("stopped_early")
        expected = stopped if stopped is not None else meta.get("T")
        if isinstance(expected, int) and k != expected:
            return f"{k} of {expected} step(s) recorded" + (" (early stopping's step)" if stopped is not None else "")
    if checkpoint is None:
        return f"the checkpoint {PREFIX_FILE} cannot be read"
    if checkpoint is not False and checkpoint != k:
        return f"the checkpoint {PREFIX_FILE} is at step {checkpoint} but {STEPS_FILE} ends at step {k}"
    return None
