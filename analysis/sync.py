"""Upload every offline wandb run under results stores, `outputs/` or `multirun/` directories: one command.

    python -m analysis.sync                             # outputs/ and multirun/ here (make sync)
    python -m analysis.sync results/ /scratch/multirun  # results stores, sweeps: found at any depth
    python -m analysis.sync multirun/2026-05-06 --dry-run   # list the runs and print the command only

Offline runs live in each job's Hydra directory (`outputs/<date>/<time>/wandb/offline-run-*`,
`multirun/<date>/<time>/<n>/wandb/offline-run-*`) or, for jobs run without Hydra, in their results-store
directory; a shell glob such as `outputs/**/wandb/offline-run-*` needs `shopt -s globstar` and never covers
`multirun/`. A job that was killed and resumed left one offline run per attempt, all with the job's run id
(ift.experiment.tracking.run_id); the newest attempt logs again every step the store kept, so it alone holds
the job's whole curve and summary, and only it is synced (`--all-attempts` hands all of them to `wandb sync`,
which uploads the files of one run in the order they started). Runs already synced (`.wandb.synced`
beside the file) are skipped unless `--include-synced`.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+)$")


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
    args = parser.parse_args(argv)
    args.dirs = args.dirs or [d for d in ("outputs", "multirun") if Path(d).is_dir()]
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
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
