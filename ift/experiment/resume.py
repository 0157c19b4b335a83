"""Resume and continuation policy: what an earlier attempt of a job (or a shorter finished run of it) lets the
next attempt keep. Every step redone says why (a WARNING naming the steps)."""
from __future__ import annotations

import copy
import logging
import shutil

import ift
from ift.experiment.config import JobConfig, config_hash
from ift.experiment.layout import STEPS_FILE
from ift.experiment.store import PREFIX_FILE, JobStore
from ift.experiment.tracking import Tracker

log = logging.getLogger(__name__)


def span(steps: list[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}-{steps[-1]}" if steps == list(range(steps[0], steps[-1] + 1)) and len(steps) > 1 \
        else ", ".join(map(str, steps))


def repair_records(store: JobStore, damage: str | None) -> None:
    """Before an attempt reads its store: cut steps.jsonl at its first unreadable line (a torn tail, or damage
    mid-file), and forget every step of an ended run whose steps.jsonl no longer matches the digest its summary
    recorded (which row changed cannot be told). `damage`: JobStore.damage() of the ended run, read before
    `begin` removed its summary. Each repair is one WARNING line."""
    if damage and STEPS_FILE in damage and "digest" in damage:
        log.warning("%s: %s; starting clean from step 1", store.path, damage)
        store.reset()
        return
    cut = store.repair_steps()
    if cut:
        kept = [r["step"] for r in store.steps()]
        log.warning("%s: %s had %d unreadable or torn line(s) after its first %d: cut, keeping step(s) %s",
                    store.path, STEPS_FILE, cut, len(kept), span(kept))


def prefix_mismatch(prefix_meta: dict, job: JobConfig, demo_text: str) -> str:
    """How a checkpoint's own record (TunedPrefix.meta) differs from this job; "" when it matches."""
    want = {"eta": job.optim.eta, "beta": job.optim.beta, "position_mode": job.optim.position_mode}
    diffs = [f"{key}={prefix_meta.get(key)!r} (this job: {value!r})" for key, value in want.items()
             if prefix_meta.get(key) != value]
    if prefix_meta.get("demo_text") != demo_text:
        diffs.append("other demonstration text")
    return ", ".join(diffs)


def resume(job: JobConfig, lm, store: JobStore, tracker: Tracker, demo_text: str):
    """(checkpoint prefix, its step rows) from an earlier attempt of this job, or (None, []) to start clean.

    The checkpoint must be this job's: its own meta (η, β, position mode, demonstration text) and the model
    must match, and steps.jsonl must hold exactly steps 1..its step. Otherwise, and whenever recorded steps
    are redone, a WARNING says which steps and why.
    """
    path = store.file(PREFIX_FILE)
    recorded = [r["step"] for r in store.steps()]

    def start_clean(why: str):
        log.warning("%s: %s; starting clean from step 1%s", store.path, why,
                    f" (redoing recorded step(s) {span(recorded)})" if recorded else "")
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
        return start_clean(f"steps.jsonl holds step(s) {span(recorded)} but the checkpoint is at step "
                           f"{prefix.step} (steps missing or recorded twice)")
    after = [s for s in recorded if s > prefix.step]
    rows = store.keep_steps(prefix.step)
    if after:
        log.warning("%s: step(s) %s were recorded after the last checkpoint (step %d): redoing them", store.path,
                    span(after), prefix.step)
    log.info("resuming from step %d of %d (%s)", prefix.step, job.optim.T, store.path)
    for row in rows:  # a new wandb run must show the whole curve
        tracker.log_step(row)
    return prefix, rows


def shorter_run(job: JobConfig) -> JobStore | None:
    """The finished store of this same job with a smaller T, checkpoint kept, longest first; None if none.

    IFT's steps 1..T' do not depend on T (a step reads only the steps before it; the scorer's batches do not
    change), so a longer run continues from the shorter one's last checkpoint instead of redoing its steps.
    Not for early-stopped runs (patience), whose last step is not T'."""
    if not job.method.checkpoints or job.method.patience(job.optim) is not None or not job.content:
        return None
    for shorter in range(job.optim.T - 1, 0, -1):
        other = copy.deepcopy(job)
        other.optim.T = shorter
        other.hash = config_hash(other.identity())
        store = JobStore(other)
        if store.trusted() == "finished" and store.file(PREFIX_FILE).exists() and \
                (not job.save_predictions or store.file("predictions.jsonl").exists()):
            return store
    return None


def continue_shorter_run(job: JobConfig, store: JobStore) -> None:
    """Start a fresh job from a finished shorter run of it (`shorter_run`): its step rows, predictions and
    checkpoint are copied in, `resume` checks them as for any resumed attempt, and meta names the source."""
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


def keep_independent_steps(store: JobStore) -> list[dict]:
    """A baseline whose steps do not build on each other (zero_shot, repeat, more_demos) keeps every step an
    earlier attempt recorded, once each, and computes only the missing ones."""
    rows = store.steps()
    steps = [r["step"] for r in rows]
    if len(set(steps)) != len(steps):
        log.warning("%s: steps.jsonl records a step twice (%s); starting clean", store.path, span(steps))
        store.reset()
        return []
    if rows:
        log.info("keeping recorded step(s) %s of an earlier attempt (%s)", span(steps), store.path)
    return rows
