"""A study's finished runs as one small file to commit beside its page, and back into a results store.

The results store is local (`results/`, not in git) and a study takes days of CPU, spread over many sessions
and machines: a store lost with its machine takes the page's evidence with it, and a half-done study starts
over. `pack` writes the finished (and diverged) runs of a store -- config.yaml, meta.json, steps.jsonl,
summary.json per job directory; no resume checkpoint, no predictions -- into a `.tar.gz`; `unpack` puts them
back into a store, where the launcher skips them as finished. `python -m analysis.study` and
`analysis.report` also read an archive directly, so a committed page is rebuilt from a clone in seconds.

Benchmark text never enters the repository: meta.json keeps the demonstrations' indices, split and the sha256
of their text, not the text. Packing merges into an existing archive (a run only the archive holds is kept),
and the file is deterministic (sorted members, fixed times), so re-packing the same runs changes nothing in git.
Only runs the launcher trusts are packed (ended, with records that agree: ift/experiment/layout.py); every job
directory left out is listed on stderr with why, and a damaged or unreadable one makes `pack` exit 1 (after
writing the archive of the others) unless `--allow-missing`.

    python -m analysis.archive pack results/eta docs/results/eta/runs.tar.gz
    python -m analysis.archive unpack docs/results/eta/runs.tar.gz results/eta
    python -m analysis.archive pack results/seeds docs/results/seeds_sst2/runs.tar.gz --tasks sst2
    python -m analysis.archive pack results/gemma docs/results/gemma/runs.tar.gz --whole-seeds sst2,mr
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ift.experiment import layout
from ift.experiment.layout import ARCHIVED_FILES as FILES
from ift.experiment.layout import ENDED, META_FILE, STEPS_FILE, SUMMARY_FILE


def left_out(job_dir: Path) -> str | None:
    """Why a job directory is not packed (None: it is): the launcher's tests for a job to skip
    (JobStore.ended and JobStore.damage): meta and summary agree that it ran to its end, and its records agree.
    A reason starting "damaged" or "unreadable" is a fault; the others (running, failed, ...) are not ended."""
    try:
        meta = layout.json_object((job_dir / META_FILE).read_text(), job_dir / META_FILE)
        summary_path = job_dir / SUMMARY_FILE
        summary = layout.json_object(summary_path.read_text(), summary_path) if summary_path.exists() else None
    except OSError as err:
        return f"unreadable: {err}"
    except layout.StoreDamaged as err:
        return f"unreadable: {err}"
    status = meta.get("status")
    if status not in ENDED or summary is None or summary.get("status") != status:
        return f"not ended: status {status}" + ("" if summary is not None else ", no summary.json")
    steps = job_dir / STEPS_FILE
    prefix = job_dir / layout.PREFIX_FILE
    damage = layout.check_ended(meta, summary, steps.read_bytes() if steps.exists() else None,
                                layout.checkpoint_step(prefix) if prefix.exists() else False)
    return f"damaged: {damage} (re-run it: the launcher repairs it)" if damage else None


def ended(job_dir: Path) -> bool:
    """The launcher's test for a job to skip: `left_out` has nothing against it."""
    return left_out(job_dir) is None


def without_text(meta: dict) -> dict:
    """meta.json with the demonstration text replaced by its sha256 (the indices and split stay)."""
    demos = dict(meta.get("demonstrations") or {})
    if "text" in demos:
        demos["text_sha256"] = hashlib.sha256(demos.pop("text").encode()).hexdigest()
    return {**meta, "demonstrations": demos} if demos else meta


def _job_files(job_dir: Path) -> dict[str, bytes]:
    files = {}
    for name in FILES:
        path = job_dir / name
        if not path.exists():
            continue
        data = path.read_bytes()
        if name == META_FILE:
            data = (json.dumps(without_text(json.loads(data)), indent=1, allow_nan=False) + "\n").encode()
        files[name] = data
    return files


def read(archive: Path) -> dict[str, dict[str, bytes]]:
    """An archive's files by job directory (`<task>/<model>/<hash>`) and file name; unsafe paths are refused."""
    jobs: dict[str, dict[str, bytes]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar.getmembers():
            path = PurePosixPath(info.name)
            if not info.isfile() or path.is_absolute() or ".." in path.parts or path.name not in FILES:
                raise ValueError(f"{archive}: unexpected member {info.name!r} (an archive holds only "
                                 f"{', '.join(FILES)} of job directories)")
            jobs.setdefault(path.parent.as_posix(), {})[path.name] = tar.extractfile(info).read()
    return jobs


def partial_seeds(seed_of: dict[str, tuple[str, object]]) -> dict[tuple[str, object], tuple[int, int]]:
    """{(task, seed): (its runs, the task's fullest seed's runs)} for the seeds with fewer runs than their task's
    fullest seed (`seed_of`: job directory -> (task, seed)): a study stopped mid-seed (a seed-by-seed run such
    as `--gemma-seeds`). Packed, such a seed would make every arm it lacks incomplete, and the page's
    complete-or-absent rule drop that arm."""
    runs = Counter(seed_of.values())
    fullest: dict[str, int] = {}
    for (task, _), n in runs.items():
        fullest[task] = max(fullest.get(task, 0), n)
    return {(task, seed): (n, fullest[task]) for (task, seed), n in runs.items() if n < fullest[task]}


def _whole_seeds(jobs: dict[str, dict[str, bytes]], tasks: set[str], archived: set[str], store: Path,
                 archive: Path) -> dict[str, dict[str, bytes]]:
    """`jobs` without the partial seeds of `tasks` (reported on stdout); refuses to drop a run the archive
    already holds: a pack never shrinks its archive (a new arm started on some seeds would otherwise make every
    other seed partial and take its committed runs out of the page)."""
    missing = tasks - {job.split("/", 1)[0] for job in jobs}
    if missing:
        raise ValueError(f"--whole-seeds: no runs of task(s) {', '.join(sorted(missing))} in {store} or {archive}")
    seed_of = {job: (job.split("/", 1)[0], json.loads(files[META_FILE]).get("seed"))
               for job, files in jobs.items() if job.split("/", 1)[0] in tasks}
    partial = partial_seeds(seed_of)
    held = sorted({ts for job, ts in seed_of.items() if ts in partial and job in archived}, key=str)
    if held:
        short = {ts: partial[ts] for ts in held}
        raise ValueError(f"--whole-seeds: partial seed(s) {held} (runs of the seed, of the fullest seed: {short}) "
                         f"have runs {archive} already holds, and a pack never drops those; finish those seeds "
                         f"(python -m analysis.archive unpack {archive} {store}, then run what is missing), or "
                         f"move the runs that make other seeds look partial (a new arm started on some seeds) "
                         f"out of {store} until they are whole")
    for (task, seed), (n, full) in sorted(partial.items(), key=str):
        print(f"{task} seed {seed}: {n} of {full} runs, left out (a partial seed)")
    return {job: files for job, files in jobs.items() if seed_of.get(job) not in partial}


def job_dirs(root: Path) -> list[Path]:
    """Every job directory at or below `root` (one holding any of the layout's job files, meta.json or not)."""
    return sorted({p.parent for name in layout.JOB_FILES for p in root.rglob(name)})


def pack(store: Path, archive: Path, tasks: Iterable[str] | None = None,
         whole_seeds: Iterable[str] = (), left: dict[str, str] | None = None) -> tuple[int, int]:
    """Write the ended runs of `store` (merged with those only `archive` already holds) to `archive`; with
    `tasks`, only the runs under those task directories (a store shared by several pages, one per subset);
    with `whole_seeds`, those tasks' partial seeds (`partial_seeds`) are left out, reported on stdout.
    `left`, when given, receives every job directory left out and why. Returns (runs from the store, runs kept
    from the archive)."""
    store, archive = Path(store), Path(archive)
    if not store.is_dir():
        raise FileNotFoundError(f"results store {store} does not exist")
    roots = [store / task for task in tasks] if tasks is not None else [store]
    jobs = {}
    for root in roots:
        for job_dir in job_dirs(root):
            why = left_out(job_dir)
            if why is None:
                jobs[job_dir.relative_to(store).as_posix()] = _job_files(job_dir)
            elif left is not None:
                left[str(job_dir)] = why
    from_store = set(jobs)
    held = read(archive) if archive.exists() else {}
    for job, files in held.items():
        jobs.setdefault(job, files)
    if whole_seeds:
        jobs = _whole_seeds(jobs, set(whole_seeds), set(held), store, archive)
    new = len(from_store & set(jobs))
    archive.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        members = ((f"{job}/{name}", data) for job, files in jobs.items() for name, data in files.items())
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp = archive.with_name(archive.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(archive)
    return new, len(jobs) - new


def unpack(archive: Path, store: Path) -> tuple[int, int]:
    """Put an archive's runs into `store`; a job directory the store already has is left as it is (it is
    either the same run or a newer attempt). Returns (runs written, runs already there)."""
    store = Path(store)
    written = present = 0
    for job, files in sorted(read(Path(archive)).items()):
        target = store / job
        if (target / META_FILE).exists():
            present += 1
            continue
        target.mkdir(parents=True, exist_ok=True)
        # meta.json last: a directory with meta.json is a complete run to everything that reads the store
        for name in sorted(files, key=lambda n: n == META_FILE):
            (target / name).write_bytes(files[name])
        written += 1
    return written, present


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis.archive", description=__doc__.splitlines()[0])
    verbs = ap.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="a store's finished runs into an archive (merged with what it holds)")
    p.add_argument("store")
    p.add_argument("archive")
    p.add_argument("--tasks", help="comma-separated task directories of the store to pack (default: all)")
    p.add_argument("--whole-seeds", default="", metavar="TASKS",
                   help="comma-separated tasks whose partial seeds (fewer runs than the task's fullest seed: a "
                        "seed-by-seed study stopped midway) are left out")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even when damaged or unreadable job directories were left out (they are listed)")
    u = verbs.add_parser("unpack", help="an archive's runs into a store (existing job directories are kept)")
    u.add_argument("archive")
    u.add_argument("store")
    args = ap.parse_args(argv)
    if args.verb == "pack":
        tasks = args.tasks.split(",") if args.tasks else None
        whole = [t for t in args.whole_seeds.split(",") if t]
        left: dict[str, str] = {}
        try:
            new, kept = pack(Path(args.store), Path(args.archive), tasks, whole, left)
        except (OSError, ValueError) as err:
            ap.exit(2, f"{ap.prog}: error: {err}\n")
        for job_dir, why in left.items():
            print(f"left out {job_dir}: {why}", file=sys.stderr)
        print(f"{args.archive}: {new} run(s) from {args.store}, {kept} kept from the archive, {len(left)} left out")
        faults = [d for d, why in left.items() if why.startswith(("damaged", "unreadable"))]
        if faults and not args.allow_missing:
            ap.exit(1, f"{ap.prog}: error: {len(faults)} damaged or unreadable run(s) left out (listed above); "
                       "re-run them with the same settings (the launcher repairs them), or pass --allow-missing\n")
    else:
        try:
            written, present = unpack(Path(args.archive), Path(args.store))
        except (OSError, ValueError, tarfile.TarError) as err:
            ap.exit(2, f"{ap.prog}: error: {err}\n")
        print(f"{args.store}: {written} run(s) restored from {args.archive}, {present} already there")


if __name__ == "__main__":
    main()
