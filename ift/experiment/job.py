"""One experiment job: check the config, draw demonstrations, tune for T steps, evaluate after each step.

Order matters for users: every config and task error is raised before the model loads; every finished
step is on disk (results store) before the next one starts; a job whose config already finished is
skipped, and a killed one resumes from its last checkpointed step.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

import ift
from ift.experiment.config import JobConfig, parse_config, to_plain
from ift.experiment.store import PREFIX_FILE, JobStore, summarize
from ift.experiment.tracking import Tracker
from ift.tasks import Task, load_task

log = logging.getLogger(__name__)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("ift", "torch", "transformers", "datasets", "bitsandbytes"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def open_task(job: JobConfig) -> Task:
    node = dict(job.task)
    path = node.pop("file", None)
    if path:
        return load_task(path, **{k: v for k, v in node.items() if k != "name" and v is not None})
    return load_task(node)


class PeakMemory:
    """Peak memory of one step: CUDA max allocated on a GPU, else the process's peak RSS (MB)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@functools.lru_cache(maxsize=1)
def load_model_once(source: str, dtype: str, device: str, quant: str, trust_remote_code: bool):
    """The jobs of a local sweep run in one process: the model is frozen, so the next job with the same
    model reuses it instead of loading it again (the bundled GGUF takes ~20 s). One model is kept."""
    return ift.load_model(source, dtype=dtype, device=device, quant=quant, trust_remote_code=trust_remote_code)


def _fit_threads_to_allocation() -> None:
    """Under SLURM, use the CPUs the job was given: torch's default (every core of the node) makes jobs
    sharing a node fight over cores (measured: a tiny-model step 1.4 s instead of 0.05 s, two jobs on 2 cores)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and int(cpus) < torch.get_num_threads():
        torch.set_num_threads(int(cpus))


def run_job(cfg, base_dir=None, output_dir=None, on_step=None) -> dict:
    """Run one job from a composed config; returns {status, store, summary}.

    base_dir: where relative paths in the config point from (the launch directory); output_dir: where
    wandb writes (Hydra's job directory; default: the store directory). on_step(row) is called after
    each finished step (tests use it to interrupt a job).
    """
    job = parse_config(cfg, base_dir)
    _fit_threads_to_allocation()
    store = JobStore(job)
    ended = store.ended() if job.skip_finished else None
    if ended:
        log.info("already %s with this config (%s): nothing to do", ended, store.path)
        return {"status": ended, "skipped": True, "store": str(store.path), "summary": store.summary()}

    resolved = to_plain(cfg)
    meta = {"config_hash": job.hash, "mode": job.mode, "model": job.model.name, "model_source": job.model.source,
            "dtype": job.model.dtype, "quant": job.model.quant, "task": job.task_name, "seed": job.seed,
            "eta": job.optim.eta, "beta": job.optim.beta, "T": job.optim.T,
            "position_mode": job.optim.position_mode, "n_shot": job.n_shot, "versions": versions()}
    store.begin(meta, yaml.safe_dump(resolved, sort_keys=False))
    log.info("job %s -> %s", job.hash[:16], store.path)
    tracker = None
    try:
        task = open_task(job)  # data errors surface here, before the model loads
        demos = task.demonstrations(job.n_shot, job.seed)
        if job.mode == "efficiency":
            examples, dev = task.eval_examples(job.seed)[: job.efficiency["n_examples"]], []
        else:
            examples = task.eval_examples(job.seed)
            dev = task.dev_examples(seed=job.seed) if task.spec.dev_size else []
        store.update_meta(task_type="classification" if task.spec.is_classification else "multiple_choice",
                          data_source=str(task.data_dir or (task.spec.hub or {}).get("path")),
                          n_eval=len(examples), n_dev=len(dev),
                          demonstrations={"text": demos.text, "indices": demos.indices, "split": demos.split})
        lm = load_model_once(job.model.source, job.model.dtype, job.device, job.model.quant,
                             job.model.trust_remote_code)
        tracker = Tracker(job.logger, Path(output_dir or store.path), f"{job.task_name}-{job.model.name}-"
                          f"{job.hash[:8]}", {**store.meta(), "config": resolved}, job.mode)
        if job.mode == "efficiency":
            status, summary, error = _efficiency(job, lm, demos.text, examples, store, tracker)
        else:
            status, summary, error = _tune(job, lm, demos.text, examples, dev, store, tracker, on_step)
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        store.file("error.txt").write_text(traceback.format_exc())
        store.end("failed", summarize(store.steps()), error)
        if tracker is not None:
            tracker.finish({"status": "failed", "error": error}, failed=True)
        raise
    store.end(status, summary, error)
    tracker.finish({**summary, "status": status})
    log.info("%s: %s", status, {k: v for k, v in summary.items() if v is not None})
    return {"status": status, "skipped": False, "store": str(store.path), "summary": {**summary, "status": status}}


def _resume(job: JobConfig, lm, store: JobStore, tracker: Tracker):
    """(checkpoint prefix, its step rows) from an earlier attempt of this config, or (None, [])."""
    path = store.file(PREFIX_FILE)
    if not path.exists():
        store.reset()
        return None, []
    try:
        prefix = ift.TunedPrefix.load(path, lm)
    except Exception as err:  # noqa: BLE001 - a torn or foreign checkpoint: start again
        log.warning("cannot resume from %s (%s): starting from step 1", path, err)
        store.reset()
        return None, []
    rows = store.keep_steps(prefix.step)
    if not rows or rows[-1]["step"] != prefix.step:
        store.reset()
        return None, []
    log.info("resuming from step %d of %d (%s)", prefix.step, job.optim.T, store.path)
    for row in rows:  # a new wandb run must show the whole curve
        tracker.log_step(row)
    return prefix, rows


def _tune(job: JobConfig, lm, demo_text, examples, dev, store: JobStore, tracker: Tracker, on_step):
    tuner = ift.ForwardTuner(lm, eta=job.optim.eta, beta=job.optim.beta, position_mode=job.optim.position_mode)
    prefix, rows = _resume(job, lm, store, tracker)
    steps = tuner.steps(demo_text, job.optim.T, resume_from=prefix)
    while True:
        memory, start = PeakMemory(lm.device), time.perf_counter()
        prefix = next(steps, None)
        if prefix is None:
            return "finished", summarize(rows), None
        if prefix.diverged:
            log.warning("diverged: %s", prefix.diverged)
            return "diverged", summarize(rows), prefix.diverged
        tune_s = time.perf_counter() - start
        scores = ift.score_examples(lm, examples, prefix=prefix, batch_size=job.batch_size, progress=job.progress)
        acc, acc_norm = ift.accuracy(scores)
        dev_acc = dev_acc_norm = None
        if dev:
            dev_acc, dev_acc_norm = ift.accuracy(ift.score_examples(lm, dev, prefix=prefix,
                                                                     batch_size=job.batch_size))
        row = {"step": prefix.step, "acc": acc, "acc_norm": acc_norm, "dev_acc": dev_acc,
               "dev_acc_norm": dev_acc_norm, "grad_norm_k": prefix.grad_norms_k, "grad_norm_v": prefix.grad_norms_v,
               "tune_s": tune_s, "time_s": time.perf_counter() - start, "peak_mem_mb": memory.mb()}
        # the row first, then the checkpoint: on resume, rows past the checkpoint are dropped and redone
        store.append_step(row)
        if job.save_predictions:
            store.append_predictions([{"step": prefix.step, "index": ex.index, "pred": s.pred,
                                       "pred_norm": s.pred_norm, "gold": s.gold} for ex, s in zip(examples, scores)])
        if job.save_prefix:
            prefix.save(store.file(PREFIX_FILE))
        rows.append(row)
        tracker.log_step(row)
        log.info("step %d/%d: acc %.4f acc_norm %.4f%s (%.1fs)", prefix.step, job.optim.T, acc, acc_norm,
                 f" dev {dev_acc:.4f}" if dev_acc is not None else "", row["time_s"])
        if on_step is not None:
            on_step(row)


def _efficiency(job: JobConfig, lm, demo_text, examples, store: JobStore, tracker: Tracker):
    from ift.efficiency import run_efficiency_study

    store.reset()
    prefix = None
    for prefix in ift.ForwardTuner(lm, eta=job.optim.eta, beta=job.optim.beta,
                                   position_mode=job.optim.position_mode).steps(demo_text, job.optim.T):
        pass  # any step's prefix has the same shape, so the same cost; use the tuned one
    eff = job.efficiency
    rows = run_efficiency_study(lm, examples, demo_text, prefix, batch_sizes=eff["batch_sizes"], device=lm.device,
                                limit=eff["max_batch_limit"], search=eff["search"])
    for row in rows:
        store.append_efficiency(row)
        tracker.log_row(row)
        log.info("%s", row)
    by = {r["method"]: r for r in rows}
    summary = {"icl_queries_per_s": by["icl"]["queries_per_s"], "tuned_queries_per_s": by["tuned"]["queries_per_s"],
               "icl_max_batch": by["icl"]["max_batch"], "tuned_max_batch": by["tuned"]["max_batch"]}
    return "finished", summary, None
