"""Where a task's rows come from: a local directory of split files, or the Hugging Face Hub.

Local layout: `<data_dir>/<task dir>/<split>.{jsonl,parquet,csv}`, columns as on the hub. The root is the
`data_dir` argument, else the spec's `data_dir` (relative to its YAML file), else `$IFT_DATA_DIR`;
with none of them the hub is used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ift.tasks.spec import TaskError, TaskSpec

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ENV_VAR = "IFT_DATA_DIR"
# (path, name, revision, split) -> the error of a failed hub load: a sweep's later jobs fail at once instead of
# each retrying the network (huggingface_hub retries for about a minute before giving up)
_HUB_FAILURES: dict[tuple, str] = {}


def resolve_data_dir(spec: TaskSpec, data_dir=None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if spec.data_dir is not None:
        root = Path(spec.data_dir).expanduser()
        return root if root.is_absolute() or spec.base_dir is None else (spec.base_dir / root).resolve()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else None


def split_files(folder: Path) -> dict[str, Path]:
    """split name -> file, for every supported file in a task folder."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in FORMATS}


def load_split(spec: TaskSpec, split: str, role: str, data_dir: Path | None):
    """One split as a `datasets.Dataset`. `role` ("eval_split" or "demo_split") names the override in errors."""
    import datasets

    if data_dir is None:
        if spec.hub is None:
            raise TaskError(f"{spec.name}: no data source: the spec has no hub id and no data_dir; "
                            f"set task.data_dir or ${ENV_VAR}")
        hub = spec.hub
        key = (hub["path"], hub.get("name"), hub.get("revision"), split)
        if key in _HUB_FAILURES:
            raise TaskError(_HUB_FAILURES[key] + " (this load already failed earlier in this process; not retried)")
        try:
            ds = datasets.load_dataset(hub["path"], hub.get("name"), split=split, revision=hub.get("revision"))
        except Exception as e:  # network, unknown split, moved repo: say which source and how to go offline
            _HUB_FAILURES[key] = (
                f"{spec.name}: loading split {split!r} of {hub['path']} ({hub.get('name')}) from the hub failed: "
                f"{type(e).__name__}: {e}. Offline? Point task.data_dir or ${ENV_VAR} at a local copy "
                f"(<dir>/{spec.dir or spec.name}/{split}.jsonl), and set HF_HUB_OFFLINE=1 to fail at once "
                f"instead of retrying the network.")
            raise TaskError(_HUB_FAILURES[key]) from e
        where = f"{hub['path']} on the hub"
    else:
        ds, where = _load_local(spec, split, role, data_dir)
    if len(ds) == 0:
        raise TaskError(f"{spec.name}: split {split!r} in {where} is empty")
    return ds


def _load_local(spec: TaskSpec, split: str, role: str, data_dir: Path):
    import datasets

    folder = data_dir / (spec.dir or spec.name)
    files = split_files(folder)
    if split not in files:
        if not folder.is_dir():
            raise TaskError(f"{spec.name}: no folder {folder} (data_dir {data_dir} has no {spec.dir or spec.name}/); "
                            f"set task.data_dir to a directory that has it, or unset it and ${ENV_VAR} to use the hub")
        found = sorted(files)
        others = [s for s in found if s != getattr(spec, role)]
        hint = (f"; override with task.{role}={others[0]}" if others else "") + \
               f", or point task.data_dir at a copy that has {split!r}"
        raise TaskError(f"{spec.name}: split {split!r} ({role}) is missing in {folder} (splits found: {found})"
                        f"{hint}")
    path = files[split]
    if path.stat().st_size == 0:  # the json/csv builders reject empty files with an unhelpful message
        raise TaskError(f"{spec.name}: split {split!r} in {path} is empty")
    if FORMATS[path.suffix] != "parquet":  # pyarrow keeps invalid UTF-8 and fails later, on reading that row
        problem = _not_utf8(path.read_bytes())
        if problem:
            raise TaskError(f"{spec.name}: cannot read split {split!r} from {path}: {problem}")
    try:
        ds = datasets.load_dataset(FORMATS[path.suffix], data_files={split: str(path)}, split=split)
    except Exception as e:  # the builders' errors rarely name the file ("An error occurred while generating ...")
        raise TaskError(f"{spec.name}: cannot read split {split!r} from {path}: {diagnose(path)} "
                        f"[{type(e).__name__}: {e}]") from e
    return ds, path


def split_source(spec: TaskSpec, split: str, data_dir: Path | None) -> str:
    """Where a split's rows come from, for error messages: the file, or the hub id."""
    if data_dir is None:
        hub = spec.hub or {}
        return f"{hub.get('path')}" + (f" ({hub['name']})" if hub.get("name") else "") + " on the hub"
    folder = data_dir / (spec.dir or spec.name)
    return str(split_files(folder).get(split, folder / split))


def _not_utf8(data: bytes) -> str | None:
    """Why these bytes are not UTF-8 (None if they are): a few ms for a 10 MB split file."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return (f"the file is not UTF-8: byte {data[e.start]:#04x} at offset {e.start} (line {line}); "
                f"re-save it as UTF-8")
    return None


def diagnose(path: Path) -> str:
    """The likely cause of a file that fails to load, found by reading it once (only after a failure)."""
    if path.suffix == ".parquet":
        return "not a readable Parquet file (truncated or not Parquet)"
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    if FORMATS[path.suffix] != "json":
        return "malformed CSV (check quoting and the number of columns)"
    if path.suffix == ".json":
        try:
            json.loads(text)
            return "a JSON document the json loader cannot read as rows (use JSON Lines: one object per line)"
        except ValueError:
            pass
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError as e:
            last = all(not rest.strip() for rest in lines[n:])
            if last and not text.endswith("\n"):
                return f"the last line ({n}) is truncated ({e}); was the file cut off while being written?"
            return f"malformed JSON at line {n}: {e}"
    return "unreadable (every line is valid JSON; do the rows have consistent column types?)"
