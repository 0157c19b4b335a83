"""Read recorded runs (local results store or a wandb project) into one in-memory form, and sort them
into used and skipped with a reason, so every table and figure is built by the same code whatever the source.

A run is used when its status is `finished` and its records are complete; anything else is skipped and
listed with why: failed (with its error), diverged (excluded from tables *and* curves: a curve that stops
early would make a mean over seeds average over a changing set of seeds), incomplete (still running or
killed: status `running`, no summary, fewer steps than T), malformed or unreadable files (including a
NaN or infinity in a step row), duplicate steps (the same step recorded twice in one run: two processes
wrote the same job directory), or a duplicate of the same configuration and seed (the later-finished one
is kept). A run whose summary.json recorded the digest of its steps.jsonl must match it (ift/experiment/layout.py),
and a job directory without meta.json is listed as unreadable, never passed over.

Library functions here never print: `report_skipped` writes the one-line-per-run list (file and reason) the
commands print on stderr, and `missing` says which skipped runs leave a hole in a study (every reason but a
divergence, which is a result, and a duplicate, whose twin is used); the commands refuse to build a page over
such holes unless given `--allow-missing`.
"""
from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis import archive
from analysis.methods import method_info
from ift.experiment import layout
from ift.jsonl import parse_jsonl

# meta.json keys that identify a run's configuration (a tuning run needs all of them)
KEYS = ("model", "task", "eta", "beta", "T", "position_mode", "n_shot", "seed")
# a baseline run (meta `method` other than "ift") has no η, β or position mode; these tell its settings apart
METHOD_KEYS = ("method", "max_repeats", "max_factor", "lr", "patience")  # patience: early-stopped runs apart
IFT_ONLY = ("eta", "beta", "position_mode")
SUMMARY_KEYS = ("icl_acc", "icl_acc_norm", "best_eval_step", "best_eval_acc", "dev_step", "dev_step_acc",
                "last_step", "status", "stopped_early")
STEP_KEYS = ("step", "acc", "acc_norm", "dev_acc", "dev_acc_norm", "grad_norm_k", "grad_norm_v", "time_s",
             "peak_mem_mb")
EFFICIENCY_KEYS = ("method", "device", "batch_size", "queries_per_s", "tokens_per_query", "peak_mem_mb",
                   "max_batch")


@dataclass
class Run:
    id: str  # the job directory, or wandb:<entity>/<project>/<run id>
    meta: dict
    steps: list[dict] = field(default_factory=list)
    summary: dict | None = None
    efficiency: list[dict] = field(default_factory=list)
    skip: str | None = None  # why the run is not used; None = used

    @property
    def mode(self) -> str:
        return self.meta.get("mode") or "tune"

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "missing"))

    @property
    def method(self) -> str:
        """What the run computed: "ift" (also for runs recorded before baselines existed) or a baseline."""
        return str(self.meta.get("method") or "ift")

    def key(self) -> tuple:
        """The configuration and seed: two runs with one key computed the same numbers."""
        return self.config_key() + (self.meta.get("seed"),)

    def config_key(self) -> tuple:
        """The configuration without the seed: the runs of one arm on one task differ only in their seed."""
        return self._key(drop=())

    def setting_key(self) -> tuple:
        """The configuration without the seed and its length (T, or the setting its method declares sets how many
        steps it records, MethodInfo.length: "max_repeats"): a run and a longer one of the same setting reach the
        same states at the steps both have."""
        try:
            length = method_info(self).get("length") or "T"
        except ValueError:  # neither registered nor described: skipped (skip_reason), never grouped
            length = "T"
        return self._key(drop=("T", length))

    def _key(self, drop: tuple) -> tuple:
        return (self.mode,) + tuple(self._planned(k) for k in KEYS if k != "seed" and k not in drop) + \
            (self.method,) + tuple(self.meta.get(k) for k in METHOD_KEYS[1:] if k not in drop) + \
            tuple(kv for kv in self._other_settings() if kv[0] not in drop)

    def _planned(self, key: str):
        """meta[key], but T as the job asked for it where the model's window capped it (meta `window_cap`: the steps
        that fit run), so that an arm whose seeds fit different numbers of steps stays one configuration."""
        cap = self.meta.get("window_cap")
        if key == "T" and isinstance(cap, dict) and "asked" in cap:
            return cap["asked"]
        return self.meta.get(key)

    def _other_settings(self) -> tuple:
        """A method's settings beyond METHOD_KEYS, as its meta.json `method_info` lists them (none for the built-in
        methods, whose keys stay as they were), so two settings of a new method are two configurations."""
        try:
            names = method_info(self).get("fields", ())
        except ValueError:  # neither registered nor described: skipped (skip_reason), never grouped
            return ()
        return tuple((k, self.meta.get(k)) for k in names if k not in METHOD_KEYS)


# ---------------------------------------------------------------- local results store

def _rows(text: str, source: str) -> list[dict]:
    rows = parse_jsonl(text, source)
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise layout.StoreDamaged(f"{source}: row {bad} is a JSON {type(rows[bad - 1]).__name__}, not an object")
    return rows


def _parse_job(rid: str, text: Callable[[str], str | None]) -> Run:
    """One job from its files' text (`text(name)`: None for a missing file)."""
    meta_text = text(layout.META_FILE)
    if meta_text is None:
        return Run(rid, {}, skip=f"unreadable: {rid}/{layout.META_FILE} is missing (the run's other files are there)")
    try:
        meta = layout.json_object(meta_text, f"{rid}/{layout.META_FILE}")
        steps_text = text(layout.STEPS_FILE)
        steps = _rows(steps_text or "", f"{rid}/{layout.STEPS_FILE}")
        if any(not isinstance(r.get("step"), int) for r in steps):
            raise layout.StoreDamaged(f"{rid}/{layout.STEPS_FILE}: a row without an integer step")
        steps.sort(key=lambda r: r["step"])
        summary_text = text(layout.SUMMARY_FILE)
        summary = layout.json_object(summary_text, f"{rid}/{layout.SUMMARY_FILE}") if summary_text is not None else None
        efficiency = _rows(text(layout.EFFICIENCY_FILE) or "", f"{rid}/{layout.EFFICIENCY_FILE}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Run(rid, {}, skip=f"unreadable: {exc}" if isinstance(exc, layout.StoreDamaged)
                   else f"unreadable: {type(exc).__name__}: {exc}")
    want = (summary or {}).get(layout.DIGEST_KEY)
    if want is not None and layout.digest((steps_text or "").encode()) != want:
        return Run(rid, meta, steps, summary, efficiency,
                   skip=f"damaged: {rid}/{layout.STEPS_FILE} differs from the one its summary.json's digest recorded")
    return Run(rid, meta, steps, summary, efficiency)


def load_job(job_dir: Path) -> Run:
    """One job directory of the results store (the directory holding meta.json)."""
    def text(name: str) -> str | None:
        path = job_dir / name
        return path.read_bytes().decode() if path.exists() else None
    return _parse_job(str(job_dir), text)


def load_archive(path: Path) -> list[Run]:
    """Every job of a study archive (`python -m analysis.archive pack`), read without unpacking it."""
    return [_parse_job(f"{path}:{job}", lambda name, files=files: _decoded(files.get(name)))
            for job, files in sorted(archive.read(path).items())]


def _decoded(data: bytes | None) -> str | None:
    return None if data is None else data.decode()


def load_local(root: str | Path) -> list[Run]:
    """Every job under `root`: a job dir itself, any tree of them such as the results store
    `results/<task>/<model>/<hash>/`, or a study archive (`*.tar.gz`)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results directory {root} does not exist")
    if root.is_file() and root.name.endswith(".tar.gz"):
        return load_archive(root)
    if any((root / name).exists() for name in layout.JOB_FILES):
        return [load_job(root)]
    jobs = sorted({p.parent for name in layout.JOB_FILES for p in root.rglob(name)})
    return [load_job(job) for job in jobs]


# ---------------------------------------------------------------- wandb

_STATE = {"finished": "finished", "running": "running", "failed": "failed", "crashed": "failed",
          "killed": "failed", "preempted": "running", "pending": "running"}
_PER_LAYER = re.compile(r"^(grad_norm_[kv])[/._](\d+)$")


def _history_row(row: dict) -> dict:
    """A wandb history row back to a steps.jsonl / efficiency.jsonl row.

    Per-layer norms may arrive as a list or as one scalar per layer (`grad_norm_k/0`, `grad_norm_k.0`, ...).
    """
    out, layers = {}, {}
    for k, v in row.items():
        if k.startswith("_"):
            continue  # wandb's own _step, _runtime, _timestamp
        m = _PER_LAYER.match(k)
        if m:
            layers.setdefault(m.group(1), {})[int(m.group(2))] = v
        else:
            out[k] = v
    for name, by_layer in layers.items():
        out.setdefault(name, [by_layer[i] for i in sorted(by_layer)])
    return out


def _plain(d) -> dict:
    """wandb Config / Summary objects as a plain dict (a fake in tests may already be one)."""
    if d is None:
        return {}
    raw = getattr(d, "_json_dict", None)
    return dict(raw if isinstance(raw, dict) else d)


def run_from_wandb(wrun, project: str) -> Run:
    """The same record a local job gives: meta from config (+ status), steps/efficiency rows from history."""
    config, summary = _plain(wrun.config), _plain(wrun.summary)
    if isinstance(config.get("meta"), dict):  # tolerate meta logged as one nested key
        config = {**config, **config["meta"]}
    config = {k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
              for k, v in config.items()}  # raw API configs wrap values as {"value": ...}
    meta = dict(config)
    meta["status"] = summary.get("status") or config.get("status") or _STATE.get(getattr(wrun, "state", ""), "missing")
    rows = [_history_row(r) for r in wrun.scan_history()]
    steps = sorted((r for r in rows if "step" in r and "acc" in r), key=lambda r: r["step"])
    efficiency = [r for r in rows if "method" in r and "queries_per_s" in r]
    summ = {k: summary[k] for k in SUMMARY_KEYS if k in summary} or None
    return Run(f"wandb:{project}/{wrun.id}", meta, steps, summ, efficiency)


def load_wandb(project: str, api=None) -> list[Run]:
    """Runs of `entity/project` through the wandb public API (`api` lets tests pass a fake)."""
    if api is None:
        import wandb

        api = wandb.Api()
    return [run_from_wandb(r, project) for r in api.runs(project)]


def check(runs: list[Run], allow_missing: bool) -> str | None:
    """Print the skipped runs (stderr) and say why a page must not be built over them (None: build it)."""
    report_skipped(runs)
    holes = missing(runs)
    if holes and not allow_missing:
        return (f"{len(holes)} run(s) unreadable, damaged, failed or incomplete (listed above): no page built; "
                "re-run or repair them (python launch.py with the same settings resumes them), or pass "
                "--allow-missing to build the page without them")
    return None


def load(sources, api=None) -> list[Run]:
    """Runs from every source: a results directory, or `wandb:<entity>/<project>`."""
    runs: list[Run] = []
    for src in sources:
        src = str(src)
        runs += load_wandb(src[len("wandb:"):], api) if src.startswith("wandb:") else load_local(src)
    return classify(runs)


# ---------------------------------------------------------------- used or skipped

def skip_reason(run: Run) -> str | None:
    """Why this run cannot be used, or None."""
    if run.skip:
        return run.skip
    meta, status = run.meta, run.status
    summary_status = (run.summary or {}).get("status")
    if summary_status in ("failed", "diverged"):
        status = summary_status
    error = meta.get("error") or ""
    if status == layout.FAILED:
        return f"failed: {error}" if error else "failed"
    if status == layout.DIVERGED:
        return f"diverged after step {len(run.steps)}" + (f": {error}" if error else "")
    if status == layout.RUNNING:
        return f"incomplete: status running (job still running or killed), {len(run.steps)} step(s) recorded"
    if status != layout.FINISHED:
        return f"incomplete: status {status!r}"
    try:  # of IFT_ONLY, a run needs those its method declares as its settings (IFT: all three)
        needed = ("model", "task") if run.mode == "efficiency" else \
            tuple(k for k in KEYS if k not in IFT_ONLY or k in method_info(run)["settings"])
    except ValueError as exc:  # a method neither registered nor described in meta.json
        return f"malformed: {exc}"
    missing = [k for k in needed if meta.get(k) is None]
    if missing:
        return f"malformed: meta lacks {', '.join(missing)}"
    if run.mode == "efficiency":
        return None if run.efficiency else "incomplete: no efficiency.jsonl rows"
    twice = sorted(n for n, k in Counter(s.get("step") for s in run.steps).items() if k > 1)
    if twice:
        return (f"duplicate steps: step(s) {twice} recorded more than once (two processes wrote this job "
                f"directory at the same time)")
    if run.summary is None:
        return "incomplete: no summary.json"
    if any(not isinstance(s.get("acc"), (int, float)) for s in run.steps):
        return "malformed: a step without a numeric acc"
    bad = next((s.get("step") for s in run.steps if not _finite(s)), None)
    if bad is not None:
        return f"malformed: a NaN or infinite number in step {bad}"
    stopped = run.summary.get("stopped_early")
    if stopped is not None:  # early stopping (optim.patience) ended it: steps 1..stopped, no more
        if sorted(s.get("step") for s in run.steps) != list(range(1, int(stopped) + 1)):
            return f"incomplete: stopped early at step {stopped} but steps {sorted(s.get('step') for s in run.steps)} recorded"
    elif len(run.steps) < int(meta["T"]):
        return f"incomplete: {len(run.steps)} of T={meta['T']} steps recorded"
    return None


def _finite(row: dict) -> bool:
    """No NaN or infinity among a row's numbers (per-layer lists included)."""
    for value in row.values():
        for x in value if isinstance(value, list) else [value]:
            if isinstance(x, float) and not math.isfinite(x):
                return False
    return True


def classify(runs: list[Run]) -> list[Run]:
    """Set `skip` on every run; among duplicates of one configuration and seed keep the later-finished one."""
    for run in runs:
        run.skip = skip_reason(run)
    kept: dict[tuple, Run] = {}
    for run in runs:
        if run.skip:
            continue
        other = kept.get(run.key())
        if other is None:
            kept[run.key()] = run
            continue
        newer, older = sorted([other, run], key=lambda r: str(r.meta.get("finished") or ""), reverse=True)
        older.skip = f"duplicate of {newer.id} (same configuration and seed; kept the later one)"
        kept[run.key()] = newer
    return runs


def longest(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """One run per setting and seed, the one with the most steps: a run continued to T = 15 from its finished
    T = 8 run (or one of r <= 29 beside r <= 4) holds the shorter one's steps, so counting both would count those
    twice. Returns the kept runs (in their input order) and the (shorter, kept longer) pairs left out."""
    best: dict[tuple, Run] = {}
    copies = []
    for r in sorted(runs, key=lambda r: (-len(r.steps), r.id)):
        other = best.setdefault(r.setting_key() + (r.meta.get("seed"),), r)
        if other is not r:
            copies.append((r, other))
    kept = {id(r) for r in best.values()}
    return [r for r in runs if id(r) in kept], copies


# the reasons skip_reason gives a run that leaves a hole (a page's own rules, e.g. "incomplete arm", are not here)
HOLES = ("unreadable", "damaged", "malformed", "failed", "incomplete:", "duplicate steps")


def missing(runs: list[Run]) -> list[Run]:
    """The skipped runs that leave a hole: unreadable, damaged, malformed, failed or incomplete (a diverged run
    is a result, and a duplicate's twin is used)."""
    return [r for r in skipped(runs) if r.skip.startswith(HOLES)]


def report_skipped(runs: list[Run], file=None) -> None:
    """One line per skipped run, its file and why (the commands print this on stderr)."""
    file = sys.stderr if file is None else file
    for run in skipped(runs):
        print(f"skipped {run.id}: {run.skip}", file=file)


def used(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.skip is None]


def skipped(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.skip is not None]
