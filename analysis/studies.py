"""The studies, one command each: list them, run one, pack its runs, build its page, check it.

A study is a Hydra preset, conf/experiment/study/<name>.yaml (its tasks, seeds per task, arms, order; the
page's title and directory under `hydra.sweeper`). This module is the rest of the product around it, the same
on a laptop and on a cluster's login node:

    python -m analysis.studies list                      # every study: its page, planned jobs, title
    python -m analysis.studies plan nine_fp32            # the plan: seeds per task, arms, jobs per named sweep
    python -m analysis.studies run nine_fp32 [overrides] # restore the committed runs, run what is left, pack, page
    python -m analysis.studies run gemma model=hf model.source=/models/opt-1.3b hydra/launcher=slurm
    python -m analysis.studies pack nine_fp32            # the store's finished runs into <page>/runs.tar.gz
    python -m analysis.studies page nine_fp32            # <page>/study.md from <page>/runs.tar.gz
    python -m analysis.studies check nine_fp32           # the archive holds exactly the planned store keys;
                                                         # docs/results.md and README quote the pages right

`run` is `python launch.py -m experiment=study/<name> [overrides]` between an unpack and a pack; with
`dry_run=true` it only says what each job would do. `--out DIR` sends the archive and page elsewhere (CI).
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
STUDIES = CONF / "experiment" / "study"
QUOTING_DOCS = ("docs/results.md", "README.md")


def names() -> list[str]:
    return sorted(p.stem for p in STUDIES.glob("*.yaml"))


def _check_name(name: str) -> str:
    if name not in names():
        raise SystemExit(f"study {name!r} is not one of: {', '.join(names())} (conf/experiment/study/)")
    return name


@contextmanager
def _conf():
    """Hydra initialised on conf/ (once: a caller already inside keeps its own)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import ift.experiment.config  # noqa: F401 - registers the typed nodes conf/ composes with (schema/...)

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def compose(name: str, overrides=(), hydra: bool = True):
    """The study's composed config (with its `hydra` node: the sweeper's study declaration)."""
    from hydra import compose as hydra_compose

    with _conf():
        return hydra_compose("config", overrides=[f"experiment=study/{_check_name(name)}", *overrides],
                             return_hydra_config=hydra)


def declaration(name: str, overrides=()) -> dict:
    """The study's `hydra.sweeper` node as plain data (title, page, groups, sweeps, ...)."""
    return copy.deepcopy(_declaration(name, tuple(overrides)))


@functools.lru_cache(maxsize=64)
def _declaration(name: str, overrides: tuple) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(name, overrides).hydra.sweeper, resolve=True)


def jobs(name: str, overrides=()) -> list[tuple[str, list[str]]]:
    """[(named sweep, a job's overrides)] in the order the study runs them."""
    from ift.experiment.study_plan import plan

    hydra = [o for o in overrides if o.startswith(("hydra.", "hydra/"))]  # Hydra's own: not a job's
    study = declaration(name, hydra)
    user = [o for o in overrides if o not in hydra]
    planned = plan(study["sweeps"], study["groups"], user, study.get("tasks"), study.get("arms"))
    return [(sweep, job) for sweep, js in planned for job in js]


def job_configs(name: str, overrides=()):
    """Each planned job's composed config, in order: (job overrides, config). Hydra composes once per choice of
    config groups (arm, task, model, ...); the job's plain values (seed, n_shot, rows) are then set as Hydra
    would set them from the command line (a job composed in full gives the same config: the store keys of the
    committed archives check it, tests/test_studies_presets.py)."""
    from hydra import compose as hydra_compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    with _conf():
        groups = set(OmegaConf.to_container(compose(name).hydra.runtime.choices))
        composed = {}
        for _, job in jobs(name, overrides):
            lines = [f"experiment=study/{name}", *job]
            parsed = parser.parse_overrides(lines)
            choice = tuple(o.input_line for o in parsed if o.key_or_group in groups)
            if choice not in composed:
                composed[choice] = hydra_compose("config", overrides=list(choice))
            cfg = composed[choice].copy()
            OmegaConf.set_struct(cfg, False)
            for o in parsed:
                if o.key_or_group not in groups:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False, force_add=True)
            yield job, cfg


def store_keys(name: str, overrides=()) -> dict[str, list[str]]:
    """{store key `<task>/<model>/<hash16>`: the job's overrides} for every planned job, by the checks a job
    makes before its model loads (the task's data is read: the key holds its fingerprint)."""
    from ift.experiment.job import prepare
    from ift.experiment.store import JobStore

    out = {}
    for job, cfg in job_configs(name, overrides):
        ready = prepare(cfg, base_dir=ROOT)
        out[JobStore(ready.job).path.relative_to(ready.job.results_dir).as_posix()] = job
    return out


def archive_keys(archive: Path) -> set[str]:
    from analysis.archive import read

    return set(read(archive))


def _page_dir(study: dict, out: str | None) -> Path:
    if out:
        return Path(out)
    if not study.get("page"):
        raise SystemExit("this study has no committed page directory: give --out DIR")
    return ROOT / study["page"]


def _store(name: str, overrides) -> Path:
    cfg = compose(name, [o for o in overrides if "=" in o and not o.startswith(("hydra.", "hydra/"))], hydra=False)
    return (ROOT / str(cfg.results_dir)).resolve()


def command(name: str) -> str:
    """The one command that reproduces a study's page."""
    return f"python -m analysis.studies run {name}"


def plan_text(name: str) -> str:
    """The study's plan in words: seeds per task and arm, per named sweep (what the page was planned to hold)."""
    from analysis.arms import seed_ranges

    study = declaration(name)
    lines = [f"{study.get('title') or name}", f"reproduce: {command(name)}",
             f"launch:    python launch.py -m experiment=study/{name}"]
    by_sweep: dict[str, dict[tuple[str, str], list[int]]] = {}
    settings: dict[str, str] = {}
    for sweep, job in jobs(name):
        values = dict(line.lstrip("+").split("=", 1) for line in job)
        settings.setdefault(values.get("task", "?"), " ".join(
            f"{k}={v}" for k, v in values.items() if k == "n_shot" or k.startswith(("task.", "method."))))
        # the arm's name, or (a sweep of methods and settings) the settings that are not the task group's
        arm = values.get("arm") or " ".join(f"{k}={v}" for k, v in values.items()
                                            if k.split(".")[0] in ("method", "optim") and "max_" not in k)
        by_sweep.setdefault(sweep, {}).setdefault((values.get("task", "?"), arm), []).append(int(values.get("seed", 0)))
    cfg = compose(name, hydra=False)
    lines.append(f"model: {cfg.model.name} ({cfg.model.source}), quant: {cfg.quant.dtype}"
                 f"{'/' + cfg.quant.method if cfg.quant.method != 'none' else ''}")
    lines.append("tasks:")
    lines += [f"  {task:<11} {text}" for task, text in settings.items()]
    for sweep, cells in by_sweep.items():
        lines.append(f"sweep {sweep}: {sum(len(s) for s in cells.values())} job(s)")
        for (task, arm), seeds in cells.items():
            lines.append(f"  {task:<11} {arm:<17} seeds {seed_ranges(seeds)}")
    return "\n".join(lines)


def _python() -> str:
    return sys.executable


def _sh(*cmd: str) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def unpack(name: str, overrides=(), out: str | None = None) -> None:
    """The runs packed where this run packs (the committed page's archive, or --out's) into the study's store,
    and the archives of the studies it reuses into theirs (reuse_from): skipped when run, not computed again."""
    from analysis.archive import unpack as unpack_archive

    study = declaration(name)
    pairs = [(_page_dir(study, out) if (out or study.get("page")) else None, _store(name, overrides))]
    if out is None:
        for other in study.get("reuse") or []:
            pairs.append((ROOT / declaration(other)["page"], _store(other, [])))
    for where, store in pairs:
        archive = where / "runs.tar.gz" if where else None
        if archive is not None and archive.is_file():
            added, kept = unpack_archive(archive, store)
            print(f"{archive} -> {store}: {added} run(s) restored, {kept} already there")


def pack(name: str, overrides=(), out: str | None = None) -> Path:
    from analysis.archive import main as archive_main

    study = declaration(name)
    archive = _page_dir(study, out) / "runs.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive_main(["pack", str(_store(name, overrides)), str(archive), *map(str, study.get("pack_options") or [])])
    return archive


def page(name: str, out: str | None = None, title: str | None = None) -> Path:
    """The study's page from its archive (what tests/test_pages_rebuild.py rebuilds byte for byte), and a
    README.md beside it that says how it was planned and the command that reproduces it."""
    from analysis import study as study_page

    study = declaration(name)
    where = _page_dir(study, out)
    archive = where / "runs.tar.gz"
    if not archive.is_file():
        raise SystemExit(f"{archive}: no archive to build the page from (run or pack the study first)")
    source = archive.relative_to(ROOT) if archive.is_relative_to(ROOT) else archive
    cwd = os.getcwd()
    os.chdir(ROOT)  # the page names its archive relative to the repository, as committed
    try:
        built = study_page.main([str(source), "--out", str(where), "--title", title or study.get("title") or name,
                                 *map(str, study.get("page_options") or [])])
    finally:
        os.chdir(cwd)
    (where / "README.md").write_text(readme(name))
    return built


def readme(name: str) -> str:
    """README.md beside a study's page: the command that reproduces it and the plan, fixed before it ran."""
    return (f"# How this page was made\n\n```\n{command(name)}\n```\n\nruns the preset "
            f"[conf/experiment/study/{name}.yaml](../../../conf/experiment/study/{name}.yaml) (any model, any "
            f"launcher: `python launch.py -m experiment=study/{name} model=... hydra/launcher=slurm`), packs its "
            f"finished runs into runs.tar.gz and builds study.md from them. The plan, fixed before it ran:\n\n"
            f"```\n{plan_text(name)}\n```\n")


def check(name: str, overrides=()) -> int:
    """0 when the study's archive holds exactly the store keys it plans and the prose quotes its pages right."""
    study = declaration(name)
    archive = _page_dir(study, None) / "runs.tar.gz"
    status = 0
    if archive.is_file():
        planned, held = set(store_keys(name, overrides)), archive_keys(archive)
        missing, extra = sorted(planned - held), sorted(held - planned)
        print(f"{name}: {len(planned)} planned store key(s), {len(held)} in {archive.relative_to(ROOT)}; "
              f"{len(missing)} planned but not archived, {len(extra)} archived but not planned")
        by_task = Counter(k.split("/")[0] for k in missing)
        if by_task:
            print("  not yet run (by task): " + ", ".join(f"{t} {n}" for t, n in sorted(by_task.items())))
        for key in extra[:20]:
            print(f"  not in the plan: {key}")
        status |= bool(missing or extra)
    from analysis.quotes import main as quotes_main

    status |= quotes_main(["check", *[str(ROOT / d) for d in QUOTING_DOCS]]) != 0
    return int(status)


def run(name: str, overrides=(), out: str | None = None) -> int:
    """Restore, launch, pack, page: the study from wherever it stopped (dry_run=true: say what is left)."""
    if out is None and any(o.split("=", 1)[0].lstrip("+") in ("model", "model.source") for o in overrides):
        raise SystemExit(f"{name} on another model needs a page of its own: --out DIR (and results_dir=DIR for its "
                         "store), so that the committed page and its archive keep their model's runs only")
    unpack(name, overrides, out)
    rc = _sh(_python(), "launch.py", "-m", f"experiment=study/{name}", *overrides)
    if any(o.lower() == "dry_run=true" for o in overrides):
        return rc
    study = declaration(name)
    if study.get("page") or out:
        pack(name, overrides, out)
        page(name, out)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.studies", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every study with its page and job count")
    for action in ("plan", "run", "pack", "page", "check"):
        p = sub.add_parser(action)
        p.add_argument("study")
        if action in ("run", "pack", "check"):
            p.add_argument("overrides", nargs="*", help="launch.py overrides for every job (model=..., quant=...)")
        if action in ("run", "pack", "page"):
            p.add_argument("--out", help="the archive's and page's directory (default: the study's page)")
    # overrides may follow --out too (argparse stops a positional list at an option): the rest are overrides
    args, rest = ap.parse_known_args(argv)
    options = [r for r in rest if r.startswith("-")]
    if options or (rest and args.action not in ("run", "pack", "check")):
        ap.error(f"unrecognized arguments: {' '.join(options or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    if args.action == "list":
        for name in names():
            study = declaration(name)
            print(f"{name:<38} {len(jobs(name)):>5} jobs  {study.get('page') or '-':<48} {study.get('title') or ''}")
        return 0
    if args.action == "plan":
        print(plan_text(args.study))
        return 0
    if args.action == "run":
        return run(args.study, args.overrides, args.out)
    if args.action == "pack":
        pack(args.study, args.overrides, args.out)
        return 0
    if args.action == "page":
        page(args.study, args.out)
        return 0
    return check(args.study, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
