"""One experiment job: check the config, draw demonstrations, tune for T steps, evaluate after each step.

Order matters for users: every config, task and data error is raised by `prepare`, before the results store
is touched or the model loads; the store directory is keyed by the config *and* the task's content (spec,
data fingerprint, demonstrations) and locked while the job runs; the model loads before the store directory
and the wandb run are made, so a load error leaves neither; every finished step is on disk before the
next one starts; a job whose key already finished, with records that agree, is skipped (one whose records
disagree is repaired), and a killed or interrupted one resumes from its last checkpointed step when the
checkpoint matches the job (else it starts clean, with a warning saying why).
"""
from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass

import torch
import yaml

import ift
from ift.experiment.config import ConfigError, JobConfig, parse_config, to_plain
from ift.experiment.efficiency import run_efficiency
from ift.experiment.interrupt import JobInterrupted, interrupts_raised
from ift.experiment.job_plan import already_ended, dry_run, reuse_ended, reuse_source
from ift.experiment.keys import data_fingerprint, file_sha256, task_identity  # noqa: F401 - re-exported
from ift.experiment.machine import PeakMemory, fit_threads_to_allocation, versions
from ift.experiment.methods import Resumed
from ift.experiment.modelcache import load_model_once
from ift.experiment.pairing import check_machine_kind
from ift.experiment.resume import (  # noqa: F401 - prefix_mismatch, repair_records re-exported
    continue_shorter_run,
    keep_independent_steps,
    prefix_mismatch,
    repair_records,
    resume,
    shorter_run,
    span,
)
from ift.experiment.store import JobStore, StoreLocked, summarize
from ift.experiment.tracking import Tracker
from ift.tasks import Task, load_task
from ift.tasks.task import Demonstrations
from ift.tuner import resolve_position_mode

log = logging.getLogger(__name__)


def open_task(job: JobConfig) -> Task:
    """The job's task. With `task.file`, a null key (conf/task/file.yaml's default) keeps the file's own value."""
    node = dict(job.task)
    path = node.pop("file", None)
    if path:
        return load_task(path, **{k: v for k, v in node.items() if k != "name" and v is not None})
    return load_task(node)


@dataclass
class Prepared:
    """A job whose every input has been checked, keyed by its content (job.hash), with its data drawn."""

    job: JobConfig
    task: Task
    demos: Demonstrations
    examples: list
    dev: list
    longest_demo_text: str | None = None  # the longest prefix the method will read (length check)


def prepare(cfg, base_dir=None) -> Prepared:
    """Every check that needs no model and writes nothing: the config, the task, its demonstrations, evaluation
    and dev examples, and the results-store key (config + task spec + data fingerprint + demonstrations)."""
    job = parse_config(cfg, base_dir)
    task = open_task(job)  # data errors surface here, before the store or the model
    demos = task.demonstrations(job.n_shot, job.seed)
    if job.mode == "efficiency":
        examples, dev = task.eval_examples(job.seed)[: job.efficiency["n_examples"]], []
    else:
        examples = task.eval_examples(job.seed)
        dev = task.dev_examples(seed=job.seed) if task.spec.dev_size else []
    job.method.check(job, task, demos)
    if job.method.patience(job.optim) is not None and not dev:
        raise ConfigError(f"optim.patience={job.optim.patience} stops tuning on the dev accuracy, but {task.name} has "
                          f"no dev rows (task.dev_size={task.spec.dev_size}); set task.dev_size (e.g. 100) or "
                          "optim.patience=null")
    job.bind(task_identity(task), data_fingerprint(task), demos.text)
    longest = job.method.longest_demo_text(job, task, demos)
    return Prepared(job, task, demos, examples, dev, longest)


def run_job(cfg, base_dir=None, output_dir=None, on_step=None) -> dict:
    """Run one job from a composed config; returns {status, skipped, store, summary}.

    status: finished | diverged (the run's own outcome), or locked (the same job is running in another
    process: nothing was done, `error` says who holds it). A config, task or data error raises before the
    store is touched; an error after that (model load, tuning) is recorded in the store and raised.

    base_dir: where relative paths in the config point from (the launch directory); output_dir: where
    wandb writes (Hydra's job directory; default: the store directory). on_step(row) is called after
    each finished step (tests use it to interrupt a job).
    """
    ready = prepare(cfg, base_dir)
    job = ready.job
    if job.dry_run:
        return dry_run(job)
    fit_threads_to_allocation()
    store = JobStore(job)
    done = already_ended(job, store)  # before the lock too, so that a re-run touches no file of a finished job
    if done:
        return done
    holder = store.running_elsewhere()  # before loading a model for nothing
    if holder:
        return _locked(StoreLocked(store.path, holder))
    reused = reuse_source(job, store)
    if not reused:  # a run that would not pair with its seed's runs: refused before hours of compute
        check_machine_kind(job, store.path)
    # the model before the store directory and the wandb run: a load error (one line) leaves neither behind
    lm = None if reused else load_model_once(job.model.source, job.model.dtype, job.device,
                                                                 job.model.quant, job.model.trust_remote_code)
    try:
        store.lock()
    except StoreLocked as err:
        return _locked(err)
    try:
        with interrupts_raised():
            return _run_locked(cfg, ready, store, output_dir, on_step, lm)
    finally:
        store.unlock()


def ended_already(cfg, base_dir=None) -> dict | None:
    """run_job's result for a job that would only skip itself (key ended, records agree), by the checks before the
    model; else None (it computes, or fails and says why). The study sweeper launches only the None ones."""
    try:
        ready = prepare(cfg, base_dir)
    except Exception:  # noqa: BLE001 - the job, launched, reports its own error
        return None
    store = JobStore(ready.job)
    return None if ready.job.dry_run or store.running_elsewhere() else already_ended(ready.job, store)


def _locked(err: StoreLocked) -> dict:
    log.warning("%s", err)
    return {"status": "locked", "skipped": True, "store": str(err.path), "holder": err.holder, "error": str(err),
            "summary": None}


def _run_locked(cfg, ready: Prepared, store: JobStore, output_dir, on_step, lm) -> dict:
    job, task, demos, examples, dev = ready.job, ready.task, ready.demos, ready.examples, ready.dev
    # again under the lock: another process may have just finished it
    done = already_ended(job, store) or reuse_ended(job, store)
    if done:
        return done
    damage = store.damage() if store.ended() else None  # begin() below removes the summary it is checked with

    resolved = to_plain(cfg)
    is_ift = job.method.reads_optim
    meta = {"config_hash": job.hash, "mode": job.mode, "model": job.model.name, "model_source": job.model.source,
            "dtype": job.model.dtype, "quant": job.model.quant, "task": job.task_name,
            "task_type": "classification" if task.spec.is_classification else "multiple_choice",
            "seed": job.seed, "method": job.method.name, **job.method.settings(),
            # η, β and the position mode are IFT's: null for a baseline, which does not read them
            "eta": job.optim.eta if is_ift else None, "beta": job.optim.beta if is_ift else None,
            "T": job.method.steps(job.optim), "position_mode": job.optim.position_mode if is_ift else None,
            "patience": job.method.patience(job.optim),
            "n_shot": job.n_shot,
            "demonstrations": {"text": demos.text, "indices": demos.indices, "split": demos.split},
            "data_source": str(task.data_dir or (task.spec.hub or {}).get("path")), "data": job.content["data"],
            "n_eval": len(examples), "n_dev": len(dev), "device": ift.models.resolve_device(job.device).type,
            "versions": versions()}
    meta["method_info"] = job.method.info(meta)  # what the analysis pages read of the method (MethodInfo)
    store.begin(meta, yaml.safe_dump(resolved, sort_keys=False))
    log.info("job %s -> %s", job.hash[:16], store.path)
    repair_records(store, damage)
    tracker = Tracker.for_job(job, store, output_dir, resolved)
    try:
        if job.method.checkpoints and job.mode == "tune" and job.skip_finished:  # false: compute every step
            continue_shorter_run(job, store)
        if lm is None:  # a reuse source that vanished before the lock
            lm = load_model_once(job.model.source, job.model.dtype, job.device, job.model.quant,
                                 job.model.trust_remote_code)
        if job.optim.position_mode == "auto":  # the key keeps "auto"; everything after uses the concrete mode
            job.optim.position_mode = resolve_position_mode(lm.model, "auto")
            if is_ift:
                store.update_meta(position_mode=job.optim.position_mode)
        if job.mode == "efficiency":
            status, summary, error = run_efficiency(job, lm, demos.text, examples, store, tracker)
        else:
            # before any work: the longest prefix this method reads + the longest query and answer must fit
            lengths = ift.check_lengths(lm, ready.longest_demo_text, examples + dev, T=job.method.checks_length_for_T(job),
                                        position_mode=job.optim.position_mode)
            store.update_meta(lengths=lengths)
            _warn_long_prompt(job, lengths)
            status, summary, error = _tune(job, lm, ready, store, tracker, on_step)
        store.end(status, summary, error)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (interrupts_raised): resumable, said in one line
        step = store.interrupt(getattr(err, "signal_name", "SIGINT"))
        tracker.finish(store.summary(), "interrupted", f"interrupted after step {step}")
        raise JobInterrupted(step, store.path, getattr(err, "signum", 2)) from None
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        store.fail(error, traceback.format_exc())  # best effort, never raises: the job's own error goes on
        tracker.finish(store.summary(), "failed", error)
        raise
    tracker.finish(summary, status, error)
    log.info("%s: %s", status, {k: v for k, v in summary.items() if v is not None})
    return {"status": status, "skipped": False, "store": str(store.path), "summary": {**summary, "status": status}}


LONG_PROMPT_TOKENS = 2048


def _warn_long_prompt(job: JobConfig, lengths: dict) -> None:
    """A long demonstration prefix is accepted, but its cost is said: every step re-reads it."""
    demo = lengths.get("demo_tokens") if isinstance(lengths, dict) else None
    if isinstance(demo, int) and demo > LONG_PROMPT_TOKENS:
        log.warning("n_shot=%d: the demonstrations are %d tokens long; every tuning step and every scored batch "
                    "reads them, so the job's time and memory grow with that length", job.n_shot, demo)


def non_finite(row: dict) -> str | None:
    """The first field of a step row holding NaN or an infinity ("grad_norm_k[3]"), or None."""
    for key, value in row.items():
        for i, x in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(x, float) and not math.isfinite(x):
                return f"{key}[{i}]" if isinstance(value, list) else key
    return None


def _resume(job: JobConfig, lm, ready: Prepared, store: JobStore, tracker: Tracker) -> tuple[Resumed, list[dict]]:
    """What the method keeps of an earlier attempt (its resume policy, ift/experiment/resume.py), and the rows of
    those steps, logged again so that a new tracker run shows the whole curve."""
    method = job.method
    if method.checkpoints:
        prefix, rows = resume(job, lm, store, tracker, ready.demos.text)
        return Resumed(frozenset(r["step"] for r in rows), prefix), rows
    if method.restarts:
        recorded = [r["step"] for r in store.steps()]
        if recorded:
            log.warning("%s: method=%s keeps no checkpoint; redoing recorded step(s) %s", store.path, method.name,
                        span(recorded))
        store.reset()
        return Resumed(), []
    rows = keep_independent_steps(store)
    for row in rows:
        tracker.log_step(row)
    return Resumed(frozenset(r["step"] for r in rows)), rows


def _tune(job: JobConfig, lm, ready: Prepared, store: JobStore, tracker: Tracker, on_step):
    """Score every step of the job's method on the evaluation and dev rows, recording each as it finishes."""
    examples, dev = ready.examples, ready.dev
    resumed, rows = _resume(job, lm, ready, store, tracker)
    extra = job.method.extra_meta(lm, ready)
    if extra:
        store.update_meta(**extra)
    points = job.method.points(job, lm, ready, resumed)
    n_steps = job.method.steps(job.optim)
    patience = job.method.patience(job.optim)
    stopper = ift.EarlyStopping(patience) if patience is not None else None
    for row in rows if stopper is not None else []:  # an earlier attempt's steps (1..k, in order) count too
        stopper.update(row["dev_acc"])
    while True:
        if stopper is not None and stopper.stopped:
            log.info("early stopping after step %d: the dev accuracy has not improved on step %d's %.4f for %d "
                     "step(s)", stopper.step, stopper.best_step, stopper.best, patience)
            return "finished", {**summarize(rows), "stopped_early": stopper.step}, None
        memory, start = PeakMemory(lm.device), time.perf_counter()
        point = next(points, None)
        if point is None:
            done = summarize(sorted(rows, key=lambda r: r["step"]))
            return "finished", {**done, "stopped_early": None} if stopper is not None else done, None
        prefix = point.prefix
        if prefix is not None and prefix.diverged:
            log.warning("diverged: %s", prefix.diverged)
            return "diverged", summarize(rows), prefix.diverged
        if lm.device.type == "cuda":  # kernels run asynchronously: wait for tuning's, or tune_s stops early
            torch.cuda.synchronize(lm.device)
        tune_s = time.perf_counter() - start
        cost: dict = {}
        scores = ift.score_examples(lm, examples, prefix=prefix, batch_size=job.batch_size, progress=job.progress,
                                    stats=cost)
        rescore = point.rescore or (lambda s: s)
        scores = rescore(scores)
        acc, acc_norm = ift.accuracy(scores)
        dev_acc = dev_acc_norm = None
        if dev:
            dev_acc, dev_acc_norm = ift.accuracy(rescore(ift.score_examples(lm, dev, prefix=prefix,
                                                                             batch_size=job.batch_size)))
        row = {"step": point.step, "acc": acc, "acc_norm": acc_norm, "dev_acc": dev_acc, "dev_acc_norm": dev_acc_norm,
               **point.extra, "tune_tokens": point.tune_tokens, "backward_tokens": point.backward_tokens,
               "prefix_tokens": point.prefix_tokens, "eval_tokens_per_query": cost["tokens"] / cost["queries"],
               "tune_s": tune_s, "time_s": time.perf_counter() - start, "peak_mem_mb": memory.mb()}
        bad = non_finite(row)
        if bad:  # the store holds standard JSON only, and such a step is not a result: stop as diverged
            reason = f"non-finite {bad} at step {point.step}"
            log.warning("diverged: %s", reason)
            return "diverged", summarize(rows), reason
        # the row first, then the checkpoint: on resume, rows past the checkpoint are dropped and redone
        store.append_step(row)
        if job.save_predictions:
            store.append_predictions([{"step": point.step, "index": ex.index, "pred": s.pred,
                                       "pred_norm": s.pred_norm, "gold": s.gold} for ex, s in zip(examples, scores)])
        if job.save_prefix and job.method.checkpoints:
            store.save_prefix(prefix)
        rows.append(row)
        if stopper is not None:
            stopper.update(dev_acc)
        tracker.log_step(row)
        log.info("%s step %d/%d: acc %.4f acc_norm %.4f%s (%.1fs)", job.method.name, point.step, n_steps, acc,
                 acc_norm, f" dev {dev_acc:.4f}" if dev_acc is not None else "", row["time_s"])
        if on_step is not None:
            on_step(row)
