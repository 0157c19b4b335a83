"""The Hydra side of a job: run it inside Hydra's job directory, and keep one failure from ending a sweep.

Each job leaves `job.json` in its Hydra output directory (status, error, summary, where its results
are); `SweepReport`, a Hydra callback, reads them when a multirun ends, prints one line per job (its
accuracies, or its error) and makes the command exit non-zero if any job failed or was skipped because
the same job was running in another process (status `locked`: its result is not there yet), after every
other job has run. A single run that finds its job locked exits non-zero too. Choosing η across a sweep on
the dev set is `python -m analysis.report`'s job.

Errors a user can act on (bad input, a model that does not load, a damaged store file, a full disk) end a
single run with one line and exit status 2, no traceback; SIGTERM or Ctrl-C ends it with one line saying at
which step and how to resume. Hydra's output folders are unique per process (`${ift_unique:}` in
conf/config.yaml: the process id and a random suffix), so two sweeps started in the same second never share
one.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import OmegaConf

from ift.experiment.config import ConfigError
from ift.experiment.interrupt import JobInterrupted
from ift.experiment.job import run_job
from ift.experiment.job_plan import COMPUTING_ACTIONS
from ift.experiment.layout import ENDED, StoreDamaged
from ift.experiment.modelcache import ModelLoadError
from ift.experiment.store import StoreFull
from ift.tasks.spec import TaskError

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
DONE = ENDED                     # a job that ran to its end (diverged is a result, not an error)
LOCKED = "locked"              # the same job was running in another process: skipped, no result yet
PLANNED = "planned"            # dry_run=true: what the job would do, nothing computed


def unique_suffix() -> str:
    """This process's id and 4 random hex digits: Hydra's folders differ between two processes started in the
    same second, on one machine or on two sharing a file system (the value is cached: one per config)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


if not OmegaConf.has_resolver("ift_unique"):
    OmegaConf.register_new_resolver("ift_unique", unique_suffix, use_cache=True)

# errors whose message says it all: one line, no traceback
ONE_LINE = (ConfigError, TaskError, ModelLoadError, StoreDamaged, StoreFull)


def run_hydra_job(cfg) -> dict:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    record = {"overrides": list(hc.overrides.task), "output_dir": str(out)}
    try:
        result = run_job(cfg, base_dir=get_original_cwd(), output_dir=out)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, and the sweep stops too
        signum = getattr(err, "signum", 2)
        line = str(err) if isinstance(err, JobInterrupted) else "interrupted before the job started: nothing recorded"
        record.update(status="interrupted", error=line)
        _write_record(out, record)
        log.error("%s", line)
        sys.exit(128 + int(signum))
    except Exception as err:
        one_line = isinstance(err, ONE_LINE)
        record.update(status="failed", error=str(err) if one_line else f"{type(err).__name__}: {err}")
        _write_record(out, record)
        if hc.mode != RunMode.MULTIRUN:
            if one_line:  # the message says it all, no traceback
                log.error("%s", err)  # to the console and the job's log
                sys.exit(2)
            raise
        if one_line:
            log.error("job failed (the sweep goes on): %s", err)
        else:
            log.error("job failed; the sweep goes on:\n%s", traceback.format_exc())
        return record
    record.update(result)
    (out / JOB_FILE).write_text(json.dumps(record, indent=2, default=str))
    if result.get("status") == LOCKED and hc.mode != RunMode.MULTIRUN:
        raise JobLocked(result.get("error") or f"{result.get('store')} is locked by another run of the same job")
    return record


def record_skipped(out: Path, overrides: list[str], result: dict) -> None:
    """The job.json of a job the study sweeper did not launch because its key already ended (SweepReport lists
    it like a job that skipped itself)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_record(out, {"overrides": list(overrides), "output_dir": str(out), **result})


def _write_record(out: Path, record: dict) -> None:
    try:
        (out / JOB_FILE).write_text(json.dumps(record, indent=2, default=str))
    except OSError as write_err:  # a full disk must not hide the job's own error
        log.error("could not write %s: %s", out / JOB_FILE, write_err)


class JobLocked(RuntimeError):
    """A single run whose job is running in another process: nothing was done (exit status non-zero)."""


def _numbers(summary: dict) -> str:
    """ICL, the paper's best step on eval, and the dev-chosen step, in one short phrase."""
    if summary.get("icl_acc") is None:
        return ""
    text = f"ICL {summary['icl_acc']:.4f}, best on eval {summary['best_eval_acc']:.4f} (step {summary['best_eval_step']})"
    if summary.get("dev_step") is not None:
        text += f", dev-chosen step {summary['dev_step']}: {summary['dev_step_acc']:.4f}"
    if summary.get("stopped_early") is not None:
        text += f", stopped early after step {summary['stopped_early']}"
    return text


class SweepReport(Callback):
    """At the end of a multirun: one line per job, and exit status 1 if any job failed or was locked."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        records = []
        for path in sorted(sweep_dir.glob(f"*/{JOB_FILE}"), key=lambda p: p.parent.name):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                records.append({"status": "unreadable", "output_dir": str(path.parent)})
        if not records:
            return
        locked = [r for r in records if r.get("status") == LOCKED]
        failed = [r for r in records if r.get("status") not in (*DONE, LOCKED, PLANNED)]
        head = f"sweep {sweep_dir}: {len(records)} job(s), {len(failed)} failed"
        planned = [r for r in records if r.get("status") == PLANNED]
        if planned:
            to_compute = sum(r.get("action") in COMPUTING_ACTIONS for r in planned)
            head += f" (dry run: {to_compute} of {len(planned)} would compute)"
        if locked:
            head += (f", {len(locked)} skipped because the same job is running in another process "
                     f"(run the sweep again once it ends to pick up its result)")
        lines = [head]
        for r in records:
            if r.get("status") == LOCKED:
                note = " (running elsewhere: skipped)"
            elif r.get("status") == PLANNED:
                note = f", {r.get('plan')}"
            else:
                note = " (already finished: skipped)" if r.get("skipped") else ""
            lines.append(f"  [{r.get('status')}{note}] {' '.join(r.get('overrides', []))}  "
                         f"{r.get('error') or _numbers(r.get('summary') or {})}  {r.get('store', '')}")
        (sweep_dir / "sweep_report.txt").write_text("\n".join(lines) + "\n")
        if failed or locked:  # printed once (the log's console handler), then a non-zero exit
            log.error("\n".join(lines))
            sys.exit(1)
        log.info("\n".join(lines))
