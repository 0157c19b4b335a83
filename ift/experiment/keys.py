"""The content part of a store key: what the opened task holds (its resolved spec and a fingerprint of its data).

`JobConfig.bind` adds these (and the demonstration text) to the key, so editing a task YAML or its data gives a
new key, while moving a mirror with the same bytes keeps its results.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from ift.tasks import Task
from ift.tasks.sources import split_files

# TaskSpec fields that say where the data lives or describe the task, not what it computes: the data
# fingerprint stands for them in the store key, so a moved mirror with the same bytes keeps its results
SPEC_LOCATION_FIELDS = ("base_dir", "data_dir", "dir", "description")
# TaskSpec fields added after results were archived: unset (None), a job computes exactly what it did before
# the field existed, so the field enters the key only when set and archived runs keep their keys
SPEC_KEYED_WHEN_SET = ("demo_max_chars",)


_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime) so the jobs of a sweep hash each file once."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def task_identity(task: Task) -> dict:
    """The resolved task spec (after its YAML is read and overrides applied), minus where its data lives and
    minus later-added fields left unset (SPEC_KEYED_WHEN_SET)."""
    ident = {k: v for k, v in asdict(task.spec).items()
             if k not in SPEC_LOCATION_FIELDS and not (k in SPEC_KEYED_WHEN_SET and v is None)}
    if ident.get("hub") and "revision" in ident["hub"]:  # where hub data lives: data_fingerprint keys the revision
        ident["hub"] = {k: v for k, v in ident["hub"].items() if k != "revision"}  # (TREC's parquet export)
    return ident


def data_fingerprint(task: Task) -> dict:
    """What the data of the splits a job reads holds: local files by sha256, hub data by its id, revision and
    the `datasets` fingerprint of each split."""
    spec = task.spec
    roles = {getattr(spec, role): role for role in ("eval_split", "demo_split")}
    if task.data_dir is not None:
        files = split_files(Path(task.data_dir) / (spec.dir or spec.name))
        return {"source": "local", "splits": {split: file_sha256(files[split]) for split in sorted(roles)}}
    hub = spec.hub or {}
    return {"source": "hub", "path": hub.get("path"), "name": hub.get("name"), "revision": hub.get("revision"),
            "splits": {split: getattr(task.split(role), "_fingerprint", None) for split, role in sorted(roles.items())}}
