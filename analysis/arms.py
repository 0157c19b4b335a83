"""The studies' protocol side: which arms a run serves, the candidate (arm, run, step) rows, and what each arm picks.

A *method* run (meta `method`: ift, zero_shot, repeat, more_demos, grad) records one row per step of its
own knob. An *arm* (`Arm`) is a method together with the settings a protocol may choose among: its fields
say what it is (code selects arms by them), its `label` is only what the page prints. The rules themselves
(scores, tie rules, early stopping) are ift/protocol.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import load
from analysis.tables import task_family
from ift.protocol import CHEAPEST, pick_frame, score_of, stop_step

PATIENCE = 2  # the simulated early stopping's patience (the IFT_EARLY arm)
BASELINE_LABELS = {"repeat": "ICL ×r (r on dev)", "more_demos": "ICL, k×n shots (k on dev)"}

# what the dev rows choose among (Arm.choice)
NONE = "none"        # one step only (ICL, zero-shot)
STEP = "step"        # the steps of one run (IFT's T at one η; r, k or the gradient's steps)
ETA = "eta"          # one IFT setting (mode, β): its runs' η and T
ALL = "all"          # every IFT run of the seed: mode, η, β and T
EARLY = "early"      # every IFT run, each cut where early stopping (patience PATIENCE) would have stopped it
RUNTIME = "runtime"  # a run stopped early while it ran (optim.patience): its own arm


@dataclass(frozen=True)
class Arm:
    """One arm of the page: a method and what the protocol chooses among (see the constants above)."""

    method: str                # ift, zero_shot, repeat, more_demos, grad, or "icl" (step 1)
    choice: str = STEP
    mode: str | None = None    # IFT's position mode, β and η where the arm fixes them
    beta: float | None = None
    eta: float | None = None
    lr: float | None = None    # gradient tuning's learning rate
    patience: int | None = None  # RUNTIME: the run's own patience

    @property
    def setting(self) -> str:
        """An IFT run's setting without η: 'IFT aligned β=0.9'."""
        return f"IFT {self.mode} β={self.beta:g}"

    @property
    def label(self) -> str:
        m = self.method
        if self.choice == RUNTIME:
            what = f"{self.setting} η={self.eta:g}" if m == "ift" else f"gradient tuning lr={self.lr:g}"
            return f"{what} (run-time early stopping, patience {self.patience})"
        if m == "ift":
            if self.choice == ALL:
                return "IFT (mode, η, β, T on dev)"
            if self.choice == EARLY:
                return f"IFT (mode, η, β on dev; T by early stopping, patience {PATIENCE})"
            if self.choice == ETA:
                return f"{self.setting} (η, T on dev)"
            return f"{self.setting} η={self.eta:g} (T on dev)"
        if m == "icl":
            return "ICL"
        if m == "zero_shot":
            return "zero-shot"
        if m == "grad":
            return f"gradient tuning lr={self.lr:g} (steps on dev)"
        return BASELINE_LABELS.get(m, m)

    @property
    def rank(self) -> int:
        """Where the arm sits in the page's tables: zero-shot, ICL, the baselines, the gradient, IFT overall,
        then every other arm (ties by label)."""
        if self.method == "ift":
            return 5 if self.choice in (ALL, EARLY) else 6
        if self.method == "grad":
            return 4
        return {"zero_shot": 0, "icl": 1, "repeat": 2, "more_demos": 3}.get(self.method, 6)


ICL_ARM = Arm("icl", NONE)
IFT_ALL_ARM = Arm("ift", ALL)
IFT_EARLY_ARM = Arm("ift", EARLY)
ICL = ICL_ARM.label
ZERO = Arm("zero_shot", NONE).label
IFT_ALL = IFT_ALL_ARM.label
IFT_EARLY = IFT_EARLY_ARM.label
ETA_ARM = " (T on dev)"  # the suffix of the per-η IFT arms (choice STEP), where each run's steps appear once
BASELINE_ARMS = BASELINE_LABELS
COLUMNS = ["task", "arm", "seed", "run", "step", "acc", "dev_acc", "tune_tokens", "backward_tokens",
           "prefix_tokens"]


def method(run: load.Run) -> str:
    return str(run.meta.get("method") or "ift")


def ift_setting(meta: dict) -> str:
    return f"IFT {meta.get('position_mode')} β={float(meta.get('beta')):g}"


def _num(x) -> float:
    return float(x or 0)


def arms(run: load.Run) -> list[Arm]:
    """The arms a run's steps belong to (an IFT run serves its η-specific, its setting's and the overall arm)."""
    m, meta = method(run), run.meta
    ift = dict(mode=meta.get("position_mode"), beta=float(meta["beta"]), eta=float(meta["eta"])) if m == "ift" \
        else {}
    if meta.get("patience") is not None:  # stopped at run time (optim.patience): its own arm, beside full runs
        return [Arm(m, RUNTIME, lr=None if m == "ift" else _num(meta.get("lr")), patience=meta["patience"], **ift)]
    if m == "ift":
        return [Arm(m, STEP, **ift), Arm(m, ETA, mode=ift["mode"], beta=ift["beta"]), IFT_ALL_ARM]
    if m == "zero_shot":
        return [Arm(m, NONE)]
    if m == "grad":
        return [Arm(m, STEP, lr=_num(meta.get("lr")))]
    return [Arm(m, STEP)]


def arms_of(run: load.Run) -> list[str]:
    """The labels of `arms(run)`."""
    return [a.label for a in arms(run)]


def early_stop(dev: list[float], patience: int = PATIENCE) -> int:
    """The last step an early-stopped run would evaluate (ift/protocol.py's rule; steps are 1-based)."""
    return stop_step(dev, patience)


def drop_incomplete(runs: list[load.Run]) -> list[load.Run]:
    """An arm is complete or absent on a task: a configuration enters the page only with every seed its task
    was run with (by any method). A study stopped midway would otherwise compare arms over different seeds and
    let the settings chosen among on dev differ from seed to seed. The runs left out get a `skip` reason (so
    the page lists them) and are not returned."""
    def task_of(r):
        return (r.meta.get("model"), r.meta.get("task"), r.meta.get("n_shot"))

    seeds, have = {}, {}
    for r in runs:
        seeds.setdefault(task_of(r), set()).add(r.meta.get("seed"))
        have.setdefault(r.config_key(), set()).add(r.meta.get("seed"))
    kept = []
    for r in runs:
        missing = seeds[task_of(r)] - have[r.config_key()]
        if missing:
            r.skip = (f"incomplete arm: this configuration lacks seed(s) {sorted(missing, key=str)} of the "
                      f"{len(seeds[task_of(r)])} its task ran with")
        else:
            kept.append(r)
    return kept


def _row_arm(a: Arm) -> dict:
    """The arm's columns of a candidate row: its label (the grouping key), its Arm and its rank."""
    return {"arm": a.label, "arm_spec": a, "choice": a.choice, "rank": a.rank}


def candidates(runs: list[load.Run], metric: str = "acc") -> pd.DataFrame:
    """One row per (arm, run, step) with what a protocol needs to choose and to report."""
    rows = []
    for run in runs:
        meta = run.meta
        simulate = method(run) == "ift" and meta.get("patience") is None  # a full run: simulate early stopping
        stop = early_stop([_pct(s.get("dev_" + metric)) for s in run.steps]) if simulate else 0
        for s in run.steps:
            base = {"model": meta.get("model"), "task": meta.get("task"), "n_shot": meta.get("n_shot"),
                    "seed": meta.get("seed"), "run": run.id, "config": repr(run.config_key()),
                    "method": method(run), "step": int(s["step"]),
                    "acc": _pct(s.get(metric)), "dev_acc": _pct(s.get("dev_" + metric)),
                    "tune_tokens": float(s.get("tune_tokens", np.nan) or 0),
                    "backward_tokens": float(s.get("backward_tokens", 0) or 0),
                    "prefix_tokens": float(s.get("prefix_tokens", np.nan) if s.get("prefix_tokens") is not None
                                           else np.nan),
                    "family": task_family(meta.get("task"), meta)}
            for arm in arms(run):
                rows.append({**base, **_row_arm(arm)})
            if base["step"] <= stop:  # what early stopping would have evaluated
                rows.append({**base, **_row_arm(IFT_EARLY_ARM)})
    return pd.DataFrame(rows)


def _pct(x) -> float:
    return np.nan if x is None else 100.0 * float(x)


def icl_rows(cands: pd.DataFrame) -> pd.DataFrame:
    """Step 1 of every method with demonstrations, one per (model, task, n_shot, seed); they must agree."""
    first = cands[(cands["step"] == 1) & (cands["method"] != "zero_shot")].drop_duplicates("run")
    group = ["model", "task", "n_shot", "seed"]
    spread = first.groupby(group)["acc"].agg(lambda a: a.max() - a.min())
    bad = spread[spread > 1e-6]
    if len(bad):
        raise ValueError(f"step 1 (ICL) differs between runs of the same seed, so they did not read the same "
                         f"demonstrations or rows: {bad.to_dict()}")
    first = first.sort_values("run").groupby(group, as_index=False).head(1)
    return first.assign(**{k: [v] * len(first) for k, v in _row_arm(ICL_ARM).items()})


def choose(cands: pd.DataFrame, protocol: str, tie=CHEAPEST) -> pd.DataFrame:
    """The (run, step) each arm picks per seed under a protocol ('dev' or 'eval'); ties by `tie`
    (ift/protocol.py; the page's rule is CHEAPEST)."""
    score = score_of(protocol)  # candidates hold the chosen metric as acc / dev_acc
    c = cands.dropna(subset=[score]) if protocol == "dev" else cands
    return pick_frame(c, score, ["model", "task", "n_shot", "arm", "seed"], tie=tie, dropna=True)


def choose_per_task(cands: pd.DataFrame, protocol: str = "eval", tie=CHEAPEST) -> pd.DataFrame:
    """One choice per task and arm instead of one per seed: the (configuration, step) with the best score
    averaged over the task's seeds (only those every seed has), ties by `tie`; returns each seed's row at it,
    shaped like `choose`. With `eval`, the paper's protocol as one T per task (and per IFT setting)."""
    score = score_of(protocol)
    group = ["model", "task", "n_shot", "arm"]
    c = cands.dropna(subset=[score])
    seeds = c.groupby(group)["seed"].nunique().rename("_seeds")
    mean = c.groupby([*group, "config", "step"], as_index=False).agg(
        **{score: (score, "mean"), "tune_tokens": ("tune_tokens", "mean"), "_n": ("seed", "nunique")})
    mean = mean.join(seeds, on=group)
    mean = mean[mean["_n"] == mean["_seeds"]].assign(run=lambda f: f["config"])  # ties: CHEAPEST's run -> config
    best = pick_frame(mean, score, group, tie=tie, dropna=True)[[*group, "config", "step"]]
    return c.merge(best, on=[*group, "config", "step"])


def ift_step_arms(cands: pd.DataFrame) -> pd.DataFrame:
    """The per-η IFT arms' rows (choice STEP), where each full IFT run's steps appear exactly once."""
    return cands[(cands["method"] == "ift") & (cands["choice"] == STEP)]
