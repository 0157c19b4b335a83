"""Upload every offline wandb run under results stores, `outputs/` or `multirun/` directories: one command.

    python -m analysis.sync                             # outputs/ and multirun/ here (make sync)
    python -m analysis.sync results/ /scratch/multirun  # results stores, sweeps: found at any depth
    python -m analysis.sync multirun/2026-05-06 --dry-run   # list the runs and print the command only
    python -m analysis.sync --from-store results/sst2/smollm2-135m/0123456789abcdef   # rebuild a run's wandb copy

Offline runs live in each job's Hydra directory (`outputs/<date>/<time>-<pid>-<hex>/wandb/offline-run-*`,
`multirun/<date>/<time>-<pid>-<hex>/<n>/wandb/offline-run-*`) or, for jobs run without Hydra, in their results-store
directory; a shell glob such as `outputs/**/wandb/offline-run-*` needs `shopt -s globstar` and never covers
`multirun/`. A job that was killed and resumed left one offline run per attempt, all with the job's run id
(ift.experiment.tracking.run_id); the newest attempt logs again every step the store kept, so it alone holds
the job's whole curve and summary, and only it is synced (`--all-attempts` hands all of them to `wandb sync`,
which uploads the files of one run in the order they started). Runs already synced (`.wandb.synced`
beside the file) are skipped unless `--include-synced`.

Before uploading it checks that the wandb server (WANDB_BASE_URL, default https://api.wandb.ai) answers within
`--timeout` seconds, and gives up at once, saying so, when it does not; each run then gets `--run-timeout`
seconds. It ends with what it synced and what it could not (exit status 1 if anything could not be synced).

`--from-store JOB_DIR ...` rebuilds the wandb copy of jobs from the results store (the record that is never
lost): a new offline run with the job's own run id, written under the job directory, holding its steps,
summary and status, then synced like any other (or left for later when the server cannot be reached).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ift.reach import unreachable

RUN_DIR = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+)$")
DEFAULT_BASE_URL = "https://api.wandb.ai"


def base_url() -> str:
    """The wandb server runs are synced to (WANDB_BASE_URL, as wandb itself reads it)."""
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def relog_from_store(job_dir: Path, project: str | None = None, entity: str | None = None) -> Path:
    """A new offline wandb run of one results-store job (its run id, steps, summary and status), written under
    the job directory; returns the offline-run directory."""
    from ift.experiment.config import LoggerConfig
    from ift.experiment.layout import META_FILE
    from ift.experiment.store import JobStore
    from ift.experiment.tracking import Tracker, job_config, job_tags, run_id

    store = JobStore.at(job_dir)
    meta = store.meta()
    if not meta:
        raise FileNotFoundError(f"{store.file(META_FILE)}: no such file (give a job directory of a results store)")
    kwargs = {"project": project} if project else {}
    cfg = LoggerConfig(mode="offline", entity=entity, **kwargs)
    mode = meta.get("mode") or "tune"
    before = set((store.path / "wandb").glob("offline-run-*"))
    tracker = Tracker(cfg, store.path, f"{meta.get('task')}-{meta.get('model')}-{store.path.name[:8]}",
                      job_config(meta, None, store.path), mode, run_id=run_id(store.path),
                      tags=job_tags(meta, None, ["from-store"]), store=store)
    if not tracker.active:
        raise RuntimeError(f"{job_dir}: wandb could not start an offline run (see the warning above)")
    from ift.jsonl import read_jsonl

    if mode == "efficiency":
        for row in read_jsonl(store.file("efficiency.jsonl")):
            tracker.log_row(row)
    else:
        for row in store.steps():
            tracker.log_step(row)
    summary = store.summary() or {}
    tracker.finish({k: v for k, v in summary.items() if k != "status"}, str(meta.get("status", "failed")),
                   meta.get("error"))
    (made,) = set((store.path / "wandb").glob("offline-run-*")) - before
    return made


@dataclass(frozen=True)
class OfflineAttempt:
    path: Path      # the offline-run-* directory
    run_id: str
    started: str    # YYYYMMDD_HHMMSS from the directory name
    synced: bool

    @property
    def order(self) -> tuple:
        return self.started, self.path.stat().st_mtime_ns


def find_offline_runs(roots) -> list[OfflineAttempt]:
    """Every offline run directory (holding a `.wandb` file) at or below each root, once each."""
    found: dict[Path, OfflineAttempt] = {}
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such directory (give results stores, outputs/ or multirun/ dirs)")
        candidates = [root] if RUN_DIR.match(root.name) else root.rglob("offline-run-*")
        for path in candidates:
            m = RUN_DIR.match(path.name)
            files = sorted(path.glob("*.wandb")) if m and path.is_dir() else []
            if files:
                found[path.resolve()] = OfflineAttempt(path, m.group(2), m.group(1),
                                                       files[0].with_suffix(".wandb.synced").exists())
    return sorted(found.values(), key=lambda a: (a.run_id, a.order))


def select(attempts: list[OfflineAttempt], all_attempts: bool = False, include_synced: bool = False):
    """(runs to sync, attempts left out with the reason), newest attempt per run id unless all_attempts."""
    keep, left = [], []
    by_id: dict[str, list[OfflineAttempt]] = {}
    for a in attempts:
        by_id.setdefault(a.run_id, []).append(a)
    for run_id, group in sorted(by_id.items()):
        group.sort(key=lambda a: a.order)
        chosen = group if all_attempts else group[-1:]
        for a in group:
            if a not in chosen:
                left.append((a, f"older attempt of run {run_id} (the newest holds every step)"))
            elif a.synced and not include_synced:
                left.append((a, "already synced"))
            else:
                keep.append(a)
    return keep, left


def sync_command(runs: list[OfflineAttempt], project: str | None = None, entity: str | None = None) -> list[str]:
    """`wandb sync` (the installed one, through this Python) for these run directories."""
    cmd = [sys.executable, "-m", "wandb", "sync", "--include-synced"]  # select() already decided
    if project:
        cmd += ["--project", project]
    if entity:
        cmd += ["--entity", entity]
    return cmd + [str(a.path) for a in runs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.sync", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", help="results stores, outputs/, multirun/ or sweep directories "
                        "(default: outputs and multirun, those that exist)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and print the command, upload nothing")
    parser.add_argument("--all-attempts", action="store_true", help="also every older attempt of a resumed job")
    parser.add_argument("--include-synced", action="store_true", help="also runs already synced")
    parser.add_argument("--project", help="upload into this project instead of the one each run names")
    parser.add_argument("--entity", help="upload under this entity")
    parser.add_argument("--from-store", nargs="+", default=[], metavar="JOB_DIR",
                        help="first rebuild these results-store jobs' wandb runs (offline) from the store")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the wandb server to answer before giving up (default 10)")
    parser.add_argument("--run-timeout", type=float, default=600.0,
                        help="seconds one run's upload may take before it is counted as not synced (default 600)")
    args = parser.parse_args(argv)
    rebuilt = []
    for job_dir in args.from_store:
        try:
            rebuilt.append(relog_from_store(Path(job_dir), args.project, args.entity))
        except (OSError, RuntimeError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"rebuilt the wandb run of {job_dir} from the store: {rebuilt[-1]}")
    args.dirs = args.dirs or ([str(p) for p in rebuilt] if rebuilt else
                              [d for d in ("outputs", "multirun") if Path(d).is_dir()])
    if not args.dirs:
        parser.error("no outputs/ or multirun/ here: name the directories to search")
    try:
        attempts = find_offline_runs(args.dirs)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs, left = select(attempts, args.all_attempts, args.include_synced)
    print(f"{len(attempts)} offline run(s) under {', '.join(args.dirs)}: {len(runs)} to sync, {len(left)} left out")
    for a in runs:
        print(f"  sync  {a.run_id}  {a.path}")
    for a, why in left:
        print(f"  skip  {a.run_id}  {a.path}  ({why})")
    if not runs:
        return 0
    cmd = sync_command(runs, args.project, args.entity)
    print("command: " + " ".join(cmd))
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    url = base_url()
    why = unreachable(url, args.timeout)
    if why:
        print(f"error: the wandb server {url} cannot be reached ({why}): nothing synced; {len(runs)} run(s) wait "
              "offline, run the same command again when online", file=sys.stderr)
        return 1
    synced, failed = upload(runs, args.project, args.entity, args.run_timeout)
    print(f"synced {len(synced)} of {len(runs)} run(s)" + (f"; could not sync {len(failed)}:" if failed else ""))
    for a, reason in failed:
        print(f"  not synced  {a.run_id}  {a.path}  ({reason})", file=sys.stderr)
    return 1 if failed else 0


def upload(runs: list[OfflineAttempt], project: str | None, entity: str | None, timeout: float):
    """`wandb sync` run by run, each within `timeout` seconds: (synced, [(not synced, why)])."""
    synced, failed = [], []
    for a in runs:
        try:
            code = subprocess.run(sync_command([a], project, entity), timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            failed.append((a, f"no answer within {timeout:g} s"))
            continue
        if code == 0:
            synced.append(a)
            print(f"  synced  {a.run_id}  {a.path}")
        else:
            failed.append((a, f"wandb sync exit status {code}"))
    return synced, failed


if __name__ == "__main__":
    sys.exit(main())
