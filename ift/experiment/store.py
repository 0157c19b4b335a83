"""The local results store: one directory per distinct job configuration, written step by step.

    <results_dir>/<task>/<model>/<config hash[:16]>/
        config.yaml        the resolved config of the last attempt
        meta.json          what ran (model, task, η, β, T, seed, demonstrations, versions) and its status
        steps.jsonl        one line per finished step (accuracies, per-layer ‖G‖, time, peak memory)
        summary.json       written when the job ends (finished, diverged or failed)
        prefix.safetensors the last tuned prefix with its momentum: the resume checkpoint
        predictions.jsonl  per-example predictions per step (eval.save_predictions=true)
        efficiency.jsonl   RQ2 measurements (mode=efficiency)
        error.txt          the traceback of a failed attempt
        .lock              held (flock) by the process running the job; names its host and pid

The directory is keyed by the config hash (of the config and the task's content: spec, data fingerprint,
demonstrations), not by Hydra's timestamped output directory, so running a sweep again finds the jobs that
already finished (and skips them) and the ones that were killed (and resumes them from their last finished
step). `analysis/` reads this layout (docs/design.md).

Every file holds standard JSON only (`allow_nan=False`): a NaN or infinity reaching the store is an error,
never an `Infinity` that other JSON readers reject. Whole files are replaced atomically (a temporary file,
removed again if the write fails); JSONL rows are appended whole or not at all (unbuffered writes, fsync'ed,
and a failed append is cut back to the size before it), and a full disk is a StoreFull naming the file:
those writes live in ift/experiment/storefiles.py.

File names, statuses and the check an ended run must pass before it is trusted (`JobStore.damage`) live in
ift/experiment/layout.py, shared with analysis/.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

from ift.experiment import layout
from ift.experiment.config import JobConfig
from ift.experiment.layout import (
    DIGEST_KEY,
    ENDED,
    ERROR_FILE,
    FAILED,
    INTERRUPTED,
    LOCK_FILE,
    META_FILE,
    PREDICTIONS_FILE,
    PREFIX_FILE,
    RUNNING,
    STEPS_FILE,
    SUMMARY_FILE,
    StoreDamaged,
)
from ift.experiment.storefiles import StoreFull, append_jsonl, is_full, rewrite_jsonl, write_json, write_text
from ift.jsonl import read_jsonl
from ift.protocol import EARLIEST, pick, score_of

try:
    import fcntl
except ImportError:  # Windows: no flock; jobs run unlocked
    fcntl = None

log = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "PREFIX_FILE", "JobStore", "StoreDamaged", "StoreFull", "StoreLocked", "summarize"]
HELD_ELSEWHERE = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # a non-blocking flock that another process holds


class StoreLocked(RuntimeError):
    """Another process holds this job's store directory (the same job is running elsewhere)."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked by another run of the same job ({holder}); skipped. Wait for it to end, "
                         f"or stop it, then run again to pick up its result")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "--", name).strip("-") or "x"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class JobStore:
    def __init__(self, job: JobConfig, results_dir: Path | None = None):
        """The job's directory in its own store, or in another one (`results_dir`: `reuse_from`)."""
        root = job.results_dir if results_dir is None else Path(results_dir)
        self.path = root / _safe(job.task_name) / _safe(job.model.name) / job.hash[:16]
        self._lock_fd: int | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def at(cls, path) -> JobStore:
        """The store of an existing job directory (analysis.sync --from-store), without its config."""
        store = cls.__new__(cls)
        store.path, store._lock_fd = Path(path), None
        return store

    # ---------------------------------------------------------------- reading
    def _object(self, name: str) -> dict | None:
        """A JSON-object file: None when missing or not JSON (a write never finished); StoreDamaged (one line
        naming the file) when it is JSON of another shape."""
        try:
            text = self.file(name).read_text()
        except OSError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            layout.json_object(text, self.file(name))  # raises, naming the file
        return data

    def meta(self) -> dict:
        return self._object(META_FILE) or {}

    def summary(self) -> dict | None:
        return self._object(SUMMARY_FILE)

    def ended(self) -> str | None:
        """"finished" or "diverged" when an earlier attempt ran to its end (re-running would change nothing)."""
        summary, status = self.summary(), self.meta().get("status")
        if status in ENDED and summary is not None and summary.get("status") == status:
            return status
        return None

    def damage(self) -> str | None:
        """Why an ended run's records disagree (layout.check_ended), or None: a run is trusted only when they
        agree; one that does not is repaired by running it again (it resumes from its last good step)."""
        summary = self.summary() or {}
        steps = self.file(STEPS_FILE)
        prefix = self.file(PREFIX_FILE)
        checkpoint = layout.checkpoint_step(prefix) if prefix.exists() else False
        return layout.check_ended(self.meta(), summary, steps.read_bytes() if steps.exists() else None, checkpoint)

    def trusted(self) -> str | None:
        """`ended()` for a run whose records agree (`damage()` is None), else None."""
        ended = self.ended()
        return ended if ended and self.damage() is None else None

    def steps(self) -> list[dict]:
        return sorted(read_jsonl(self.file(STEPS_FILE)), key=lambda r: r["step"])

    def repair_steps(self) -> int:
        """Cut steps.jsonl at its first unreadable line (a torn tail, or damage mid-file): the rows before it
        stay, the rest go (resume then redoes those steps). Returns how many lines were cut."""
        path = self.file(STEPS_FILE)
        if not path.exists():
            return 0
        lines = [line for line in path.read_bytes().splitlines(keepends=True) if line.strip()]
        good = 0
        for line in lines:
            try:
                row = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                break
            good += 1
        if good < len(lines):
            write_text(path, b"".join(lines[:good]).decode())
        return len(lines) - good

    # ---------------------------------------------------------------- locking
    def lock(self) -> None:
        """Take this directory for the current process: an exclusive, non-blocking flock on `.lock`.

        Raises StoreLocked (naming the holder's host and pid) when another process holds it. The lock goes
        with the process: a killed job leaves no stale lock. A file system without locks only gets a warning.
        """
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in HELD_ELSEWHERE:
                raise StoreLocked(self.path, self.holder()) from None
            log.warning("cannot lock %s (%s): running without a lock; do not run this job twice at once",
                        self.path, err)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {now()}\n".encode())
        self._lock_fd = fd

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ("host H pid P since T")."""
        try:
            text = self.file(LOCK_FILE).read_text().strip()
        except OSError:
            text = ""
        return text or "holder unknown"

    def running_elsewhere(self) -> str | None:
        """The lock's holder when another process holds this directory now, else None; takes nothing and
        creates nothing (a dry run asks it)."""
        if fcntl is None or not self.file(LOCK_FILE).exists():
            return None
        fd = os.open(self.file(LOCK_FILE), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in HELD_ELSEWHERE:
                return self.holder()
            return None
        finally:
            os.close(fd)  # closing releases a lock taken here
        return None

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock

    # ---------------------------------------------------------------- writing
    def begin(self, meta: dict, config_yaml: str | None = None) -> None:
        """Mark the job running (a new attempt keeps `started` and counts attempts)."""
        self.path.mkdir(parents=True, exist_ok=True)
        old = self.meta()
        meta = {**meta, "status": "running", "error": None, "started": old.get("started") or now(),
                "finished": None, "attempts": int(old.get("attempts", 0)) + 1,
                "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        if config_yaml is not None:
            write_text(self.file("config.yaml"), config_yaml)
        self.file(SUMMARY_FILE).unlink(missing_ok=True)
        self.file(ERROR_FILE).unlink(missing_ok=True)
        write_json(self.file(META_FILE), meta)

    def update_meta(self, **items) -> None:
        write_json(self.file(META_FILE), {**self.meta(), **items})

    def keep_steps(self, last_step: int) -> list[dict]:
        """Drop step rows after `last_step` (recorded after the checkpoint was saved); return the rest."""
        rows = [r for r in self.steps() if r["step"] <= last_step]
        rewrite_jsonl(self.file(STEPS_FILE), rows)
        preds = self.file(PREDICTIONS_FILE)
        if preds.exists():
            rewrite_jsonl(preds, [r for r in read_jsonl(preds) if r["step"] <= last_step])
        return rows

    def reset(self) -> None:
        """Forget the results of an earlier attempt that cannot be resumed."""
        for name in (STEPS_FILE, PREDICTIONS_FILE, layout.EFFICIENCY_FILE, PREFIX_FILE):
            self.file(name).unlink(missing_ok=True)

    def append_step(self, row: dict) -> None:
        append_jsonl(self.file(STEPS_FILE), [row])

    def append_predictions(self, rows: list[dict]) -> None:
        append_jsonl(self.file(PREDICTIONS_FILE), rows)

    def append_efficiency(self, row: dict) -> None:
        append_jsonl(self.file(layout.EFFICIENCY_FILE), [row])

    def save_prefix(self, prefix) -> None:
        """The resume checkpoint; a full disk is a StoreFull naming the file (safetensors' own error does not)."""
        path = self.file(PREFIX_FILE)
        try:
            prefix.save(path)
        except Exception as err:
            if is_full(err):
                raise StoreFull(path) from err
            raise

    def end(self, status: str, summary: dict, error: str | None = None) -> None:
        """Record how the job ended: summary (with the digest of steps.jsonl) first, then meta (`ended` needs
        both to agree; `damage` checks the digest)."""
        steps = self.file(STEPS_FILE)
        sealed = {DIGEST_KEY: layout.digest(steps.read_bytes())} if steps.exists() else {}
        write_json(self.file(SUMMARY_FILE), {**summary, "status": status, **sealed})
        self.update_meta(status=status, error=error, finished=now())

    def interrupt(self, signal_name: str) -> int:
        """Mark the job interrupted (SIGTERM, Ctrl-C): resumable, like a killed job; returns its last step."""
        last = max((r["step"] for r in self.steps()), default=0)
        try:
            self.update_meta(status=INTERRUPTED, error=f"interrupted by {signal_name} after step {last}",
                             finished=now())
        except Exception as err:  # noqa: BLE001 - the interruption goes on; the status stays running
            log.warning("could not record the interruption in %s (%s)", self.file(META_FILE), err)
        return last

    def fail(self, error: str, details: str) -> None:
        """Record a failure, best effort: never raises, so the caller re-raises the original error.

        meta.json's status goes first; summary.json (status failed) only follows when that worked, so a
        full disk never leaves a `failed` summary beside a `running` meta. error.txt (the traceback) is tried
        on its own. A write that fails only logs a warning; temporary files left by the interrupted attempt
        (a checkpoint half-saved, say) are removed.
        """
        try:
            summary = summarize(self.steps())
        except Exception:  # noqa: BLE001 - an unreadable steps file must not hide the job's own error
            summary = summarize([])
        try:
            self.update_meta(status=FAILED, error=error, finished=now())
        except Exception as err:  # noqa: BLE001
            log.warning("could not record the failure in %s (%s): it stays marked %s", self.file(META_FILE), err,
                        RUNNING)
        else:
            try:
                write_json(self.file(SUMMARY_FILE), {**summary, "status": FAILED})
            except Exception as err:  # noqa: BLE001
                log.warning("could not write %s (%s)", self.file(SUMMARY_FILE), err)
        try:
            write_text(self.file(ERROR_FILE), details)
        except Exception as err:  # noqa: BLE001
            log.warning("could not write %s (%s)", self.file(ERROR_FILE), err)
        for tmp in self.path.glob("*.tmp"):  # a write the error interrupted (this process holds the lock)
            try:
                tmp.unlink()
            except OSError:
                pass


def summarize(rows: list[dict]) -> dict:
    """ICL (step 1), the paper's best step on the evaluation set, and the step the dev set picks.

    Both choices follow ift/protocol.py (ties go to the earliest step, so a flat curve reports plain ICL).
    """
    if not rows:
        return {"icl_acc": None, "icl_acc_norm": None, "best_eval_step": None, "best_eval_acc": None,
                "dev_step": None, "dev_step_acc": None, "last_step": 0}
    first = rows[0]
    best = pick(rows, score_of("eval"), EARLIEST)
    dev = pick(rows, score_of("dev"), EARLIEST)
    return {"icl_acc": first["acc"], "icl_acc_norm": first["acc_norm"],
            "best_eval_step": best["step"], "best_eval_acc": best["acc"],
            "dev_step": dev["step"] if dev else None, "dev_step_acc": dev["acc"] if dev else None,
            "last_step": rows[-1]["step"]}
