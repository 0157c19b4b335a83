"""One experiment job: check the config, draw demonstrations, tune for T steps, evaluate after each step.

Order matters for users: every config, task and data error is raised by `prepare`, before the results store
is touched or the model loads; the store directory is keyed by the config *and* the task's content (spec,
data fingerprint, demonstrations) and locked while the job runs; every finished step is on disk before the
next one starts; a job whose key already finished is skipped, and a killed one resumes from its last
checkpointed step when the checkpoint matches the job (else it starts clean, with a warning saying why).
"""
from __future__ import annotations

import copy
import gc
import hashlib
import logging
import math
import os
import platform
import resource
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

import ift
from ift.baselines import repeat_demonstrations
from ift.experiment import methods
from ift.experiment.config import ConfigError, JobConfig, config_hash, parse_config, to_plain
from ift.experiment.store import PREFIX_FILE, JobStore, StoreLocked, summarize
from ift.experiment.tracking import Tracker
from ift.tasks import Task, load_task
from ift.tasks.sources import split_files
from ift.tasks.task import Demonstrations
from ift.tuner import resolve_position_mode

log = logging.getLogger(__name__)

# TaskSpec fields that say where the data lives or describe the task, not what it computes: the data
# fingerprint stands for them in the store key, so a moved mirror with the same bytes keeps its results
SPEC_LOCATION_FIELDS = ("base_dir", "data_dir", "dir", "description")


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
    """The job's task. With `task.file`, a null key (conf/task/file.yaml's default) keeps the file's own value."""
    node = dict(job.task)
    path = node.pop("file", None)
    if path:
        return load_task(path, **{k: v for k, v in node.items() if k != "name" and v is not None})
    return load_task(node)


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
    """The resolved task spec (after its YAML is read and overrides applied), minus where its data lives."""
    return {k: v for k, v in asdict(task.spec).items() if k not in SPEC_LOCATION_FIELDS}


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
    if job.method.name == "grad" and len(demos.indices) < 2:
        raise ConfigError(f"method=grad needs at least 2 demonstrations (each one's answer is predicted from the "
                          f"others: leave-one-out), but n_shot={job.n_shot} gives {len(demos.indices)} on "
                          f"{task.name}; raise n_shot (multiple-choice tasks count demonstrations in all)")
    if job.method.patience(job.optim) is not None and not dev:
        raise ConfigError(f"optim.patience={job.optim.patience} stops tuning on the dev accuracy, but {task.name} has "
                          f"no dev rows (task.dev_size={task.spec.dev_size}); set task.dev_size (e.g. 100) or "
                          "optim.patience=null")
    job.bind(task_identity(task), data_fingerprint(task), demos.text)
    longest = {"zero_shot": None, "repeat": repeat_demonstrations(demos.text, job.method.max_repeats),
               # drawn here so that a class too small for k·n_shot demonstrations fails before the store
               "more_demos": task.demonstrations(job.method.max_factor * job.n_shot, job.seed).text
               if job.method.name == "more_demos" else None}.get(job.method.name, demos.text)
    return Prepared(job, task, demos, examples, dev, longest)


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


_LOADED: dict[tuple, object] = {}          # the last model loaded (one kept)
_FAILED_LOADS: dict[tuple, Exception] = {}  # loads that failed in this process, by their exact arguments


def load_model_once(source: str, dtype: str, device: str, quant: str, trust_remote_code: bool):
    """The jobs of a local sweep run in one process: the model is frozen, so the next job with the same
    model reuses it instead of loading it again (the bundled GGUF takes ~20 s). One model is kept, and the
    previous one is dropped before another loads.

    A load that failed is not tried again with the same arguments in this process: the next jobs of the sweep
    fail at once with the same error instead of each waiting for the same hub timeout (out-of-memory errors
    excepted; `load_model_once.cache_clear()` forgets both the model and the failures).
    """
    key = (source, dtype, device, quant, trust_remote_code)
    if key in _LOADED:
        return _LOADED[key]
    failed = _FAILED_LOADS.get(key)
    if failed is not None:
        log.error("model %s failed to load earlier in this process; not trying again: %s: %s", source,
                  type(failed).__name__, failed)
        raise failed
    if _LOADED:
        _LOADED.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        lm = ift.load_model(source, dtype=dtype, device=device, quant=quant, trust_remote_code=trust_remote_code)
    except Exception as err:
        if not isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):  # memory may be free next time
            _FAILED_LOADS[key] = err
        raise
    _LOADED[key] = lm
    return lm


def _forget_models() -> None:
    _LOADED.clear()
    _FAILED_LOADS.clear()


load_model_once.cache_clear = _forget_models


def _fit_threads_to_allocation() -> None:
    """Under SLURM, use the CPUs the job was given: torch's default (every core of the node) makes jobs
    sharing a node fight over cores (measured: a tiny-model step 1.4 s instead of 0.05 s, two jobs on 2 cores)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and int(cpus) < torch.get_num_threads():
        torch.set_num_threads(int(cpus))


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
    _fit_threads_to_allocation()
    store = JobStore(job)
    done = _already_ended(job, store)  # before the lock too, so that a re-run touches no file of a finished job
    if done:
        return done
    try:
        store.lock()
    except StoreLocked as err:
        log.warning("%s", err)
        return {"status": "locked", "skipped": True, "store": str(store.path), "holder": err.holder,
                "error": str(err), "summary": None}
    try:
        return _run_locked(cfg, ready, store, output_dir, on_step)
    finally:
        store.unlock()


def _already_ended(job: JobConfig, store: JobStore) -> dict | None:
    """run_job's result for a job whose key already finished or diverged (skip_finished), else None."""
    ended = store.ended() if job.skip_finished else None
    if not ended:
        return None
    log.info("already %s with this config (%s): nothing to do", ended, store.path)
    return {"status": ended, "skipped": True, "store": str(store.path), "summary": store.summary()}


def _run_locked(cfg, ready: Prepared, store: JobStore, output_dir, on_step) -> dict:
    job, task, demos, examples, dev = ready.job, ready.task, ready.demos, ready.examples, ready.dev
    done = _already_ended(job, store)  # again under the lock: another process may have just finished it
    if done:
        return done

    resolved = to_plain(cfg)
    is_ift = job.method.name == "ift"
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
            "n_eval": len(examples), "n_dev": len(dev), "versions": versions()}
    store.begin(meta, yaml.safe_dump(resolved, sort_keys=False))
    log.info("job %s -> %s", job.hash[:16], store.path)
    tracker = Tracker.for_job(job, store, output_dir, resolved)  # before the model loads: a failed load shows
    try:
        if is_ift and job.mode == "tune" and job.skip_finished:  # skip_finished=false: compute every step
            _continue_shorter_run(job, store)
        lm = load_model_once(job.model.source, job.model.dtype, job.device, job.model.quant,
                             job.model.trust_remote_code)
        if job.optim.position_mode == "auto":  # the key keeps "auto"; everything after uses the concrete mode
            job.optim.position_mode = resolve_position_mode(lm.model, "auto")
            if is_ift:
                store.update_meta(position_mode=job.optim.position_mode)
        if job.mode == "efficiency":
            status, summary, error = _efficiency(job, lm, demos.text, examples, store, tracker)
        else:
            # before any work: the longest prefix this method reads + the longest query and answer must fit
            store.update_meta(lengths=ift.check_lengths(
                lm, ready.longest_demo_text, examples + dev, T=job.optim.T if is_ift else 1,
                position_mode=job.optim.position_mode))
            status, summary, error = _tune(job, lm, ready, store, tracker, on_step)
        store.end(status, summary, error)
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        store.fail(error, traceback.format_exc())  # best effort, never raises: the job's own error goes on
        tracker.finish(store.summary(), "failed", error)
        raise
    tracker.finish(summary, status, error)
    log.info("%s: %s", status, {k: v for k, v in summary.items() if v is not None})
    return {"status": status, "skipped": False, "store": str(store.path), "summary": {**summary, "status": status}}


def _span(steps: list[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}-{steps[-1]}" if steps == list(range(steps[0], steps[-1] + 1)) and len(steps) > 1 \
        else ", ".join(map(str, steps))


def prefix_mismatch(prefix_meta: dict, job: JobConfig, demo_text: str) -> str:
    """How a checkpoint's own record (TunedPrefix.meta) differs from this job; "" when it matches."""
    want = {"eta": job.optim.eta, "beta": job.optim.beta, "position_mode": job.optim.position_mode}
    diffs = [f"{key}={prefix_meta.get(key)!r} (this job: {value!r})" for key, value in want.items()
             if prefix_meta.get(key) != value]
    if prefix_meta.get("demo_text") != demo_text:
        diffs.append("other demonstration text")
    return ", ".join(diffs)


def _resume(job: JobConfig, lm, store: JobStore, tracker: Tracker, demo_text: str):
    """(checkpoint prefix, its step rows) from an earlier attempt of this job, or (None, []) to start clean.

    The checkpoint must be this job's: its own meta (η, β, position mode, demonstration text) and the model
    must match, and steps.jsonl must hold exactly steps 1..its step. Otherwise, and whenever recorded steps
    are redone, a WARNING says which steps and why.
    """
    path = store.file(PREFIX_FILE)
    recorded = [r["step"] for r in store.steps()]

    def start_clean(why: str):
        log.warning("%s: %s; starting clean from step 1%s", store.path, why,
                    f" (redoing recorded step(s) {_span(recorded)})" if recorded else "")
        store.reset()
        return None, []

    if not path.exists():
        if recorded:
            return start_clean("no checkpoint to resume from" + ("" if job.save_prefix else
                                                                  " (eval.save_prefix=false keeps none)"))
        store.reset()
        return None, []
    try:
        prefix = ift.TunedPrefix.load(path, lm)
    except Exception as err:  # noqa: BLE001 - a torn or foreign checkpoint: start again
        return start_clean(f"cannot resume from {path} ({type(err).__name__}: {err})")
    differs = prefix_mismatch(prefix.meta, job, demo_text)
    if differs:
        return start_clean(f"the checkpoint {path.name} was tuned with {differs}")
    if not 1 <= prefix.step <= job.optim.T:
        return start_clean(f"the checkpoint is at step {prefix.step}, outside 1..T={job.optim.T}")
    before = [s for s in recorded if s <= prefix.step]
    if before != list(range(1, prefix.step + 1)):
        return start_clean(f"steps.jsonl holds step(s) {_span(recorded)} but the checkpoint is at step "
                           f"{prefix.step} (steps missing or recorded twice)")
    after = [s for s in recorded if s > prefix.step]
    rows = store.keep_steps(prefix.step)
    if after:
        log.warning("%s: step(s) %s were recorded after the last checkpoint (step %d): redoing them", store.path,
                    _span(after), prefix.step)
    log.info("resuming from step %d of %d (%s)", prefix.step, job.optim.T, store.path)
    for row in rows:  # a new wandb run must show the whole curve
        tracker.log_step(row)
    return prefix, rows


def shorter_run(job: JobConfig) -> JobStore | None:
    """The finished store of this same job with a smaller T, checkpoint kept, longest first; None if none.

    IFT's steps 1..T' do not depend on T (a step reads only the steps before it; the scorer's batches do not
    change), so a longer run continues from the shorter one's last checkpoint instead of redoing its steps.
    Not for early-stopped runs (patience), whose last step is not T'."""
    if job.method.name != "ift" or job.method.patience(job.optim) is not None or not job.content:
        return None
    for shorter in range(job.optim.T - 1, 0, -1):
        other = copy.deepcopy(job)
        other.optim.T = shorter
        other.hash = config_hash(other.identity())
        store = JobStore(other)
        if store.ended() == "finished" and store.file(PREFIX_FILE).exists() and \
                (not job.save_predictions or store.file("predictions.jsonl").exists()):
            return store
    return None


def _continue_shorter_run(job: JobConfig, store: JobStore) -> None:
    """Start a fresh job from a finished shorter run of it (`shorter_run`): its step rows, predictions and
    checkpoint are copied in, `_resume` checks them as for any resumed attempt, and meta names the source."""
    if store.steps() or store.file(PREFIX_FILE).exists():
        return  # an attempt of this job itself: resume that
    source = shorter_run(job)
    if source is None:
        return
    names = (PREFIX_FILE, "steps.jsonl") + (("predictions.jsonl",) if job.save_predictions else ())
    for name in names:
        shutil.copyfile(source.file(name), store.file(name))
    store.update_meta(continued_from=str(source.path))
    done = len(source.steps())
    log.info("continuing from the finished T=%d run %s (its steps 1-%d are this job's)", done, source.path, done)


def non_finite(row: dict) -> str | None:
    """The first field of a step row holding NaN or an infinity ("grad_norm_k[3]"), or None."""
    for key, value in row.items():
        for i, x in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(x, float) and not math.isfinite(x):
                return f"{key}[{i}]" if isinstance(value, list) else key
    return None


def _keep_independent_steps(store: JobStore) -> list[dict]:
    """A baseline whose steps do not build on each other (zero_shot, repeat, more_demos) keeps every step an
    earlier attempt recorded, once each, and computes only the missing ones."""
    rows = store.steps()
    steps = [r["step"] for r in rows]
    if len(set(steps)) != len(steps):
        log.warning("%s: steps.jsonl records a step twice (%s); starting clean", store.path, _span(steps))
        store.reset()
        return []
    if rows:
        log.info("keeping recorded step(s) %s of an earlier attempt (%s)", _span(steps), store.path)
    return rows


def _points(job: JobConfig, lm, ready: Prepared, store: JobStore, tracker: Tracker):
    """(the method's steps still to run, the rows of earlier steps kept)."""
    name, demos = job.method.name, ready.demos
    if name == "ift":
        prefix, rows = _resume(job, lm, store, tracker, demos.text)
        return methods.ift_points(lm, demos.text, job.optim, resume_from=prefix), rows
    if name == "grad":  # Adam's state is not checkpointed: a killed run starts again
        recorded = [r["step"] for r in store.steps()]
        if recorded:
            log.warning("%s: method=grad keeps no optimiser checkpoint; redoing recorded step(s) %s", store.path,
                        _span(recorded))
        store.reset()
        demo_examples = [ready.task.example("demo_split", i) for i in demos.indices]
        store.update_meta(pseudo_grad_cosine=methods.pseudo_gradient_cosines(lm, demo_examples))
        return methods.grad_points(lm, demo_examples, job.optim.T, job.method.lr), []
    rows = _keep_independent_steps(store)
    for row in rows:
        tracker.log_step(row)
    done = {r["step"] for r in rows}
    if name == "zero_shot":
        return (p for p in methods.zero_shot_points() if p.step not in done), rows
    if name == "repeat":
        return methods.repeat_points(lm, demos.text, job.method.max_repeats, done), rows
    return methods.more_demos_points(lm, ready.task, job.n_shot, job.seed, job.method.max_factor, done), rows


def _tune(job: JobConfig, lm, ready: Prepared, store: JobStore, tracker: Tracker, on_step):
    """Score every step of the job's method on the evaluation and dev rows, recording each as it finishes."""
    examples, dev = ready.examples, ready.dev
    points, rows = _points(job, lm, ready, store, tracker)
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
        tune_s = time.perf_counter() - start
        cost: dict = {}
        scores = ift.score_examples(lm, examples, prefix=prefix, batch_size=job.batch_size, progress=job.progress,
                                    stats=cost)
        acc, acc_norm = ift.accuracy(scores)
        dev_acc = dev_acc_norm = None
        if dev:
            dev_acc, dev_acc_norm = ift.accuracy(ift.score_examples(lm, dev, prefix=prefix,
                                                                     batch_size=job.batch_size))
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
        if job.save_prefix and job.method.name == "ift":
            prefix.save(store.file(PREFIX_FILE))
        rows.append(row)
        if stopper is not None:
            stopper.update(dev_acc)
        tracker.log_step(row)
        log.info("%s step %d/%d: acc %.4f acc_norm %.4f%s (%.1fs)", job.method.name, point.step, n_steps, acc,
                 acc_norm, f" dev {dev_acc:.4f}" if dev_acc is not None else "", row["time_s"])
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
