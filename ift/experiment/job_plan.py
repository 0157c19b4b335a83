"""What running a job now would do, decided before its model loads: skip it (its key ended), copy it in from
another store (`reuse_from`), repair, resume or continue an earlier attempt, or run it; and `dry_run=true`,
which only says so. Kept apart from job.py, which does the computing."""
from __future__ import annotations

import logging
import shutil

from ift.experiment.config import ConfigError, JobConfig
from ift.experiment.layout import STEPS_FILE
from ift.experiment.pairing import check_machine_kind
from ift.experiment.resume import shorter_run
from ift.experiment.store import LOCK_FILE, JobStore

log = logging.getLogger(__name__)


def already_ended(job: JobConfig, store: JobStore) -> dict | None:
    """run_job's result for a job whose key already finished or diverged (skip_finished) with records that
    agree (a damaged one is repaired: resumed from its last good step, said on one line), else None."""
    ended = store.ended() if job.skip_finished else None
    if not ended:
        return None
    damage = store.damage()
    if damage:
        log.warning("%s: %s run whose records disagree (%s): repairing it (resuming from its last good step)",
                    store.path, ended, damage)
        return None
    log.info("already %s with this config (%s): nothing to do", ended, store.path)
    return {"status": ended, "skipped": True, "store": str(store.path), "summary": store.summary()}


# what a dry run says a job would do: running elsewhere, skip, copy in, or one of these, which compute
COMPUTING_ACTIONS = ("repair", "resume", "continue", "run")


def plan(job: JobConfig, store: JobStore) -> tuple[str, str]:
    """(action, why): what running this job now would do, by the checks run_job makes before it loads the
    model: skip it (ended), copy it in (`reuse_from`), resume an earlier attempt, continue a finished shorter
    run, or run it."""
    total = job.method.steps(job.optim)
    holder = store.running_elsewhere()
    if holder:
        return "running elsewhere", f"running in another process ({holder})"
    if not job.skip_finished:
        return "run", f"{total} step(s), skip_finished=false: nothing kept"
    ended = store.ended()
    if ended:
        damage = store.damage()
        return ("repair", f"{ended} but its records disagree ({damage}): resume from its last good step") if damage \
            else ("skip", f"already {ended}")
    source = reuse_source(job, store)
    if source is not None:
        return "copy in", f"already {source.ended()} in {source.path}"
    try:
        recorded = len(store.steps())
    except ValueError as err:  # a line damaged mid-file
        return "repair", f"{err}: cut there, resume from the last good step"
    if recorded:
        return "resume", f"an earlier attempt recorded {recorded} of {total} step(s)"
    if job.method.checkpoints and job.mode == "tune":
        shorter = shorter_run(job)
        if shorter is not None:
            return "continue", f"its finished {len(shorter.steps())}-step run, to step {total}"
    return "run", f"{total} step(s)"


def dry_run(job: JobConfig) -> dict:
    """run_job's result for `dry_run=true`: the plan; nothing computed, no file written."""
    store = JobStore(job)
    action, why = plan(job, store)
    if action in COMPUTING_ACTIONS:
        try:
            check_machine_kind(job, store.path)
        except ConfigError as err:
            action, why = "refuse", str(err)
    log.info("dry run: %s, %s (%s)", action, why, store.path)
    return {"status": "planned", "skipped": True, "action": action, "plan": f"{action}: {why}",
            "store": str(store.path), "summary": None}


def reuse_source(job: JobConfig, store: JobStore) -> JobStore | None:
    """The first store of `reuse_from` where this job ended under the same key; None if none, or if this job's
    own directory holds an attempt (that one resumes), or with skip_finished=false."""
    if not job.skip_finished or store.meta() or store.file(STEPS_FILE).exists():
        return None
    for root in job.reuse_from:
        source = JobStore(job, root)
        if source.trusted():
            return source
    return None


def reuse_ended(job: JobConfig, store: JobStore) -> dict | None:
    """Copy in this job's run from another store (`reuse_from`) where it already ended under the same key, so
    that studies sharing runs (the many-seeds study's seeds 0-4 are the nine-task study's) compute them once.
    The key covers the config, the data and the demonstrations, so the copy is the run this job would make;
    meta.json names its source."""
    source = reuse_source(job, store)
    if source is None:
        return None
    ended = source.ended()
    for path in sorted(source.path.iterdir()):
        if path.is_file() and path.name != LOCK_FILE:
            shutil.copyfile(path, store.file(path.name))
    store.update_meta(reused_from=str(source.path))
    log.info("already %s in %s (same key): copied in, nothing to run", ended, source.path)
    return {"status": ended, "skipped": True, "store": str(store.path), "summary": store.summary(),
            "reused_from": str(source.path)}
