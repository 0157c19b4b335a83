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
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

FILES = ("config.yaml", "meta.json", "steps.jsonl", "summary.json")
ENDED = ("finished", "diverged")


def ended(job_dir: Path) -> bool:
    """The launcher's test for a job to skip (ift.experiment.store.JobStore.ended): meta and summary agree
    that it ran to its end."""
    try:
        status = json.loads((job_dir / "meta.json").read_text()).get("status")
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return status in ENDED and summary.get("status") == status


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
        if name == "meta.json":
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


def _whole_seeds(jobs: dict[str, dict[str, bytes]], tasks: set[str], from_store: set[str], store: Path,
                 archive: Path) -> dict[str, dict[str, bytes]]:
    """`jobs` without the partial seeds of `tasks` (reported on stdout); refuses to drop a run only the archive
    holds (it would be lost)."""
    missing = tasks - {job.split("/", 1)[0] for job in jobs}
    if missing:
        raise ValueError(f"--whole-seeds: no runs of task(s) {', '.join(sorted(missing))} in {store} or {archive}")
    seed_of = {job: (job.split("/", 1)[0], json.loads(files["meta.json"]).get("seed"))
               for job, files in jobs.items() if job.split("/", 1)[0] in tasks}
    partial = partial_seeds(seed_of)
    only_archived = sorted({ts for job, ts in seed_of.items() if ts in partial and job not in from_store}, key=str)
    if only_archived:
        raise ValueError(f"--whole-seeds: partial seed(s) {only_archived} have runs only {archive} holds; restore "
                         f"them (python -m analysis.archive unpack {archive} {store}) and finish those seeds")
    for (task, seed), (n, full) in sorted(partial.items(), key=str):
        print(f"{task} seed {seed}: {n} of {full} runs, left out (a partial seed)")
    return {job: files for job, files in jobs.items() if seed_of.get(job) not in partial}


def pack(store: Path, archive: Path, tasks: Iterable[str] | None = None,
         whole_seeds: Iterable[str] = ()) -> tuple[int, int]:
    """Write the ended runs of `store` (merged with those only `archive` already holds) to `archive`; with
    `tasks`, only the runs under those task directories (a store shared by several pages, one per subset);
    with `whole_seeds`, those tasks' partial seeds (`partial_seeds`) are left out, reported on stdout.
    Returns (runs from the store, runs kept from the archive)."""
    store, archive = Path(store), Path(archive)
    if not store.is_dir():
        raise FileNotFoundError(f"results store {store} does not exist")
    roots = [store / task for task in tasks] if tasks is not None else [store]
    jobs = {m.parent.relative_to(store).as_posix(): _job_files(m.parent)
            for root in roots for m in sorted(root.rglob("meta.json")) if ended(m.parent)}
    from_store = set(jobs)
    for job, files in (read(archive) if archive.exists() else {}).items():
        jobs.setdefault(job, files)
    if whole_seeds:
        jobs = _whole_seeds(jobs, set(whole_seeds), from_store, store, archive)
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
        if (target / "meta.json").exists():
            present += 1
            continue
        target.mkdir(parents=True, exist_ok=True)
        # meta.json last: a directory with meta.json is a complete run to everything that reads the store
        for name in sorted(files, key=lambda n: n == "meta.json"):
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
    u = verbs.add_parser("unpack", help="an archive's runs into a store (existing job directories are kept)")
    u.add_argument("archive")
    u.add_argument("store")
    args = ap.parse_args(argv)
    if args.verb == "pack":
        tasks = args.tasks.split(",") if args.tasks else None
        whole = [t for t in args.whole_seeds.split(",") if t]
        new, kept = pack(Path(args.store), Path(args.archive), tasks, whole)
        print(f"{args.archive}: {new} run(s) from {args.store}, {kept} kept from the archive")
    else:
        written, present = unpack(Path(args.archive), Path(args.store))
        print(f"{args.store}: {written} run(s) restored from {args.archive}, {present} already there")


if __name__ == "__main__":
    main()
