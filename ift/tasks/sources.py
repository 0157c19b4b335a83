"""Where a task's rows come from: a local directory of split files, or the Hugging Face Hub.

Local layout: `<data_dir>/<task dir>/<split>.{jsonl,parquet,csv}`, columns as on the hub. The root is the
`data_dir` argument, else the spec's `data_dir` (relative to its YAML file), else `$IFT_DATA_DIR`;
with none of them the hub is used.
"""
from __future__ import annotations

import os
from pathlib import Path

from ift.tasks.spec import TaskError, TaskSpec

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ENV_VAR = "IFT_DATA_DIR"


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
        try:
            ds = datasets.load_dataset(hub["path"], hub.get("name"), split=split, revision=hub.get("revision"))
        except Exception as e:  # network, unknown split, moved repo: say which source and how to go offline
            raise TaskError(f"{spec.name}: loading split {split!r} of {hub['path']} ({hub.get('name')}) from the hub "
                            f"failed: {type(e).__name__}: {e}. Offline? Point task.data_dir or ${ENV_VAR} at a "
                            f"local copy.") from e
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
    return datasets.load_dataset(FORMATS[path.suffix], data_files={split: str(path)}, split=split), path
