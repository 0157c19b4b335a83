"""Whole-file and whole-line writes of the results store (ift/experiment/store.py), in standard JSON only.

A whole file is replaced atomically (a temporary file, removed again if the write fails); JSONL rows are
appended whole or not at all (unbuffered writes, fsync'ed, and a failed append is cut back to the size before
it). A full disk is a StoreFull naming the file, which is then as it was before the write.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

__all__ = ["StoreFull", "append_jsonl", "is_full", "rewrite_jsonl", "write_json", "write_text"]


class StoreFull(OSError):
    """A store write that found no space left: names the file; the file is as it was before the write."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"{path}: no space left on device (nothing half-written was kept; free "
                         "space and re-run the same command to resume)")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def is_full(err: BaseException) -> bool:
    """A write that failed for lack of space (an OSError, or safetensors' error naming os error 28)."""
    return getattr(err, "errno", None) == errno.ENOSPC or "os error 28" in str(err)


def dumps(data, **kwargs) -> str:
    """Standard JSON: NaN and infinities raise ValueError instead of becoming `NaN` / `Infinity`."""
    return json.dumps(data, allow_nan=False, **kwargs)


def sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def write_text(path: Path, text: str) -> None:
    """Replace `path` atomically (a reader never sees half a file); on failure no temporary file is left."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            sync(f)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if is_full(err) and not isinstance(err, StoreFull):
            raise StoreFull(path) from err
        raise


def write_json(path: Path, data) -> None:
    write_text(path, dumps(data, indent=2, default=str))


def cut_torn_tail(f) -> None:
    """Cut a torn last line (a writer killed mid-line; readers drop it, ift/jsonl.py) off a file open for
    appending, so the next row starts a line of its own instead of turning the torn one into damage."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            f.truncate(pos - step + newline + 1)
            return
        pos -= step
    f.truncate(0)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines or nothing: unbuffered writes, fsync'ed, and on any error (a full disk) the file is cut
    back to its size before the write, so no torn line is left for the next append or a reader to meet."""
    text = "".join(dumps(row, default=float) + "\n" for row in rows).encode()  # a bad value fails first
    if path.exists():
        with open(path, "rb+") as f:
            cut_torn_tail(f)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            write_all(fd, text)
            os.fsync(fd)  # a step reported as done survives a kill
        except BaseException as err:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            if is_full(err):
                raise StoreFull(path) from err
            raise
    finally:
        os.close(fd)


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(dumps(r) + "\n" for r in rows))
