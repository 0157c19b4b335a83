"""The local results store: one directory per distinct job configuration, written step by step.

    <results_dir>/<task>/<model>/<config hash[:16]>/
        config.yaml        the resolved config of the last attempt
        meta.json          what ran (model, task, η, β, T, seed, demonstrations, versions) and its status
        steps.jsonl        one line per finished step (accuracies, per-layer ‖G‖, time, peak memory)
        summary.json       written when the job ends (finished, diverged or failed)
        prefix.safetensors the last tuned prefix with its momentum: the resume checkpoint
        predictions.jsonl  per-example predictions per step (eval.save_predictions=true)
        efficiency.jsonl   RQ2 measurements (mode=efficiency)

The directory is keyed by the config hash, not by Hydra's timestamped output directory, so running a
sweep again finds the jobs that already finished (and skips them) and the ones that were killed (and
resumes them from their last finished step). `analysis/` reads this layout (docs/design.md).
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from ift.experiment.config import JobConfig

PREFIX_FILE = "prefix.safetensors"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "--", name).strip("-") or "x"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # atomic: a reader never sees half a file


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())  # a step reported as done survives a kill


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)  # atomic, like _write_json


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (the job was killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class JobStore:
    def __init__(self, job: JobConfig):
        self.path = job.results_dir / _safe(job.task_name) / _safe(job.model.name) / job.hash[:16]

    def file(self, name: str) -> Path:
        return self.path / name

    # ---------------------------------------------------------------- reading
    def meta(self) -> dict:
        try:
            return json.loads(self.file("meta.json").read_text())
        except (OSError, ValueError):
            return {}

    def summary(self) -> dict | None:
        try:
            return json.loads(self.file("summary.json").read_text())
        except (OSError, ValueError):
            return None

    def ended(self) -> str | None:
        """"finished" or "diverged" when an earlier attempt ran to its end (re-running would change nothing)."""
        summary, status = self.summary(), self.meta().get("status")
        if status in ("finished", "diverged") and summary is not None and summary.get("status") == status:
            return status
        return None

    def steps(self) -> list[dict]:
        return sorted(read_jsonl(self.file("steps.jsonl")), key=lambda r: r["step"])

    # ---------------------------------------------------------------- writing
    def begin(self, meta: dict, config_yaml: str | None = None) -> None:
        """Mark the job running (a new attempt keeps `started` and counts attempts)."""
        self.path.mkdir(parents=True, exist_ok=True)
        old = self.meta()
        meta = {**meta, "status": "running", "error": None, "started": old.get("started") or now(),
                "finished": None, "attempts": int(old.get("attempts", 0)) + 1,
                "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        if config_yaml is not None:
            self.file("config.yaml").write_text(config_yaml)
        self.file("summary.json").unlink(missing_ok=True)
        _write_json(self.file("meta.json"), meta)

    def update_meta(self, **items) -> None:
        _write_json(self.file("meta.json"), {**self.meta(), **items})

    def keep_steps(self, last_step: int) -> list[dict]:
        """Drop step rows after `last_step` (recorded after the checkpoint was saved); return the rest."""
        rows = [r for r in self.steps() if r["step"] <= last_step]
        _rewrite_jsonl(self.file("steps.jsonl"), rows)
        preds = self.file("predictions.jsonl")
        if preds.exists():
            _rewrite_jsonl(preds, [r for r in read_jsonl(preds) if r["step"] <= last_step])
        return rows

    def reset(self) -> None:
        """Forget the results of an earlier attempt that cannot be resumed."""
        for name in ("steps.jsonl", "predictions.jsonl", "efficiency.jsonl", PREFIX_FILE):
            self.file(name).unlink(missing_ok=True)

    def append_step(self, row: dict) -> None:
        _append_jsonl(self.file("steps.jsonl"), [row])

    def append_predictions(self, rows: list[dict]) -> None:
        _append_jsonl(self.file("predictions.jsonl"), rows)

    def append_efficiency(self, row: dict) -> None:
        _append_jsonl(self.file("efficiency.jsonl"), [row])

    def end(self, status: str, summary: dict, error: str | None = None) -> None:
        _write_json(self.file("summary.json"), {**summary, "status": status})
        self.update_meta(status=status, error=error, finished=now())


def summarize(rows: list[dict]) -> dict:
    """ICL (step 1), the paper's best step on the evaluation set, and the step the dev set picks.

    Ties go to the earliest step, so a flat curve reports plain ICL.
    """
    if not rows:
        return {"icl_acc": None, "icl_acc_norm": None, "best_eval_step": None, "best_eval_acc": None,
                "dev_step": None, "dev_step_acc": None, "last_step": 0}
    first = rows[0]
    best = max(rows, key=lambda r: (r["acc"], -r["step"]))
    with_dev = [r for r in rows if r.get("dev_acc") is not None]
    dev = max(with_dev, key=lambda r: (r["dev_acc"], -r["step"])) if with_dev else None
    return {"icl_acc": first["acc"], "icl_acc_norm": first["acc_norm"],
            "best_eval_step": best["step"], "best_eval_acc": best["acc"],
            "dev_step": dev["step"] if dev else None, "dev_step_acc": dev["acc"] if dev else None,
            "last_step": rows[-1]["step"]}
