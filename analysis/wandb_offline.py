"""Read an offline wandb run (`offline-run-*/run-<id>.wandb`) back without a server.

wandb ≥ 0.20 writes the file from its Go core and no longer ships a Python reader (the old
`wandb.sdk.internal.datastore`), but the format is stable and is what `wandb sync` uploads: a 7-byte header
(`:W&B`, magic 0xBEE1, version 0), then LevelDB log records in 32 KiB blocks (crc32, length, type:
full/first/middle/last), each payload a `wandb.proto.wandb_internal_pb2.Record`. This module decodes them
with wandb's own protobuf classes, checking every checksum, and folds them into what the server would show:
the run (id, group, name, tags, job type), config, history rows, summary, metric definitions, files and
the exit code. `python -m analysis.wandb_offline <run dir or .wandb file>` prints it.
"""
from __future__ import annotations

import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct("<4sHB")   # ident, magic, version
CHUNK = struct.Struct("<IHB")     # crc32, length, type
BLOCK = 32768
IDENT, MAGIC = b":W&B", 0xBEE1
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class OfflineRunError(ValueError):
    """Not a wandb run file, or a damaged one (the message says where)."""


def records(path: str | Path):
    """Every Record of a .wandb file, in order (a torn record at the end of a killed run is dropped)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        raise OfflineRunError(f"{path}: {len(data)} bytes, too short for a wandb run file")
    ident, magic, version = HEADER.unpack_from(data)
    if ident != IDENT or magic != MAGIC:
        raise OfflineRunError(f"{path}: not a wandb run file (header {ident!r} {magic:#x})")
    pos, pending = HEADER.size, None
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += left
            continue
        payload = data[pos + CHUNK.size: pos + CHUNK.size + length]
        if len(payload) < length:
            return  # torn last record
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise OfflineRunError(f"{path}: checksum mismatch at byte {pos}")
        pos += CHUNK.size + length
        if kind == FULL:
            whole = payload
        elif kind == FIRST:
            pending, whole = payload, None
        elif kind == MIDDLE and pending is not None:
            pending, whole = pending + payload, None
        elif kind == LAST and pending is not None:
            whole, pending = pending + payload, None
        else:
            raise OfflineRunError(f"{path}: record type {kind} out of order at byte {pos}")
        if whole is not None:
            record = pb.Record()
            record.ParseFromString(whole)
            yield record


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _nested_set(d: dict, keys: list[str], value) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


@dataclass
class OfflineRun:
    path: Path
    id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)   # one dict per log call, wandb's _step etc. included
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)   # define_metric: {name|glob_name, step_metric, hidden, summary}
    files: list[str] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)  # {name, type, files}
    exit_code: int | None = None                        # None: the process died before wandb finished the run

    def step_metric(self, key: str) -> str | None:
        """The x-axis wandb charts `key` against: its own define_metric, else the last matching glob."""
        import fnmatch

        exact = [m for m in self.metrics if m.get("name") == key]
        globs = [m for m in self.metrics if m.get("glob_name") and fnmatch.fnmatchcase(key, m["glob_name"])]
        for m in exact + globs[::-1]:
            if m.get("step_metric"):
                return m["step_metric"]
        return None

    def hidden(self, key: str) -> bool:
        import fnmatch

        return any(m.get("hidden") for m in self.metrics
                   if m.get("name") == key or (m.get("glob_name") and fnmatch.fnmatchcase(key, m["glob_name"])))


def read_run(path: str | Path) -> OfflineRun:
    """An offline run directory (or its .wandb file) as the server would show it once synced."""
    from google.protobuf.json_format import MessageToDict

    path = Path(path)
    files = [path] if path.suffix == ".wandb" else sorted(path.glob("*.wandb"))
    if not files:
        raise OfflineRunError(f"{path}: no .wandb file (expected an offline-run-* directory)")
    run = OfflineRun(files[0].parent)
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":  # the first one opens the run; later ones (run.tags = ...) carry only what changed
            r = record.run
            for attr, value in (("id", r.run_id), ("project", r.project), ("group", r.run_group),
                                ("name", r.display_name), ("job_type", r.job_type)):
                if value:
                    setattr(run, attr, value)
            if r.tags:
                run.tags = list(r.tags)
            for item in r.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
            for item in record.config.remove:
                run.config.pop(_item_key(item), None)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _nested_set(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _nested_set(run.summary, list(item.nested_key) or [item.key], json.loads(item.value_json))
            for item in record.summary.remove:
                run.summary.pop(_item_key(item), None)
        elif kind == "metric":
            m = MessageToDict(record.metric, preserving_proto_field_name=True)
            options = m.pop("options", {})
            run.metrics.append({**m, "hidden": bool(options.get("hidden"))})
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "files": [e.path for e in a.manifest.contents]})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def read_finished_run(path: str | Path, timeout: float = 60.0) -> OfflineRun:
    """`read_run` once the file holds the run's exit record: wandb's core process may still be writing the
    file's last records (an artifact, the summary, the exit) after `run.finish()` has returned."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        run = read_run(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def main(argv=None) -> int:
    for arg in argv if argv is not None else sys.argv[1:]:
        run = read_run(arg)
        print(json.dumps({k: v for k, v in run.__dict__.items() if k != "history"} | {"path": str(run.path),
                          "history_rows": len(run.history)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
