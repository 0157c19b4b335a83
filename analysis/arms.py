"""The studies' protocol side: which arms a run serves, the candidate (arm, run, step) rows, and what each arm picks.

A *method* run records one row per step of its own knob. An *arm* (`Arm`) is a method together with the
settings a protocol may choose among: its fields say what it is (code selects arms by them), its `label` is
what the page prints and groups by. What an arm is made of comes from what the method declared
(analysis.methods.method_info: its label, settings, pooled arms, rank), never from the method's name. The rules
themselves (scores, tie rules, early stopping) are ift/protocol.py's; choosing is analysis.core's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import core, load
from analysis.methods import fill, method_info, setting
from analysis.tables import task_family
from ift.protocol import CHEAPEST, score_of, stop_step

PATIENCE = 2  # the simulated early stopping's patience (the early-stopping arm)

# what the dev rows choose among (Arm.choice)
NONE = "none"        # one step only (ICL, zero-shot)
STEP = "step"        # the steps of one run (IFT's T at one η; r, k or the gradient's steps)
POOL = "pool"        # the runs of a method that share some settings (IFT: mode and β), their steps
ALL = "all"          # every run of the method of the seed: all its settings and steps
EARLY = "early"      # every run of the method, each cut where early stopping (patience PATIENCE) would have stopped
RUNTIME = "runtime"  # a run stopped early while it ran (optim.patience): its own arm

# whose arm it is (Arm.role)
ICL_ROLE = "icl"     # step 1 of the runs with demonstrations
SUBJECT = "subject"  # the method the pages study (MethodInfo.subject: IFT)
RIVAL = "rival"      # every other method: a baseline the subject must beat


@dataclass(frozen=True)
class Arm:
    """One arm of the page: its label (the grouping key), what the protocol chooses among, its place."""

    label: str
    choice: str = STEP
    rank: int = 6          # its place in the page's tables (MethodInfo.rank); ties by label
    role: str = RIVAL
    setting: str = ""      # one run's setting as the page names it ("IFT aligned β=0.9 η=0.1"; "" when pooled)
    detail: str = ""       # its settings alone ("aligned β=0.9 η=0.1"), a figure's legend
    demos: bool = True     # it reads demonstrations (a zero-shot arm does not)
    tunes: bool = False    # MethodInfo.tunes
    candidates: int = 1    # the dev candidates one run of it offers (MethodInfo: its steps)


ICL_ARM = Arm("ICL", NONE, rank=1, role=ICL_ROLE)
ICL = ICL_ARM.label


def arms(run: load.Run) -> list[Arm]:
    """The arms a run's steps belong to: its own (one setting; or its run-time early stopping), then those its
    method pools it into (IFT: its mode and β over η, then every setting)."""
    info, meta = method_info(run), run.meta
    name = setting(info, meta)
    common = dict(rank=info["rank"], role=SUBJECT if info["subject"] else RIVAL, setting=name,
                  detail=fill(info["setting"], meta), demos=info["step1_is_icl"], tunes=info["tunes"],
                  candidates=info["candidates"])
    if meta.get("patience") is not None:  # stopped at run time (optim.patience): its own arm, beside full runs
        return [Arm(f"{name} (run-time early stopping, patience {meta['patience']})", RUNTIME, **common)]
    own = [Arm(f"{name} ({info['chooses']} on dev)", STEP, **common) if info["chooses"] else Arm(name, NONE, **common)]
    return own + [pool_arm(info, meta, kept, chooses) for kept, chooses in info["pools"]]


def pool_arm(info: dict, meta: dict, kept: str, chooses: str) -> Arm:
    """The arm pooling the runs of a method that share the `kept` settings (none: every setting)."""
    label = f"{info['label']} {fill(kept, meta)}" if kept else info["label"]
    return Arm(f"{label} ({chooses} on dev)", POOL if kept else ALL, rank=info["rank"] if kept else info["pooled_rank"],
               role=SUBJECT if info["subject"] else RIVAL, tunes=info["tunes"])


def early_arm(info: dict) -> Arm:
    """The arm of simulated early stopping over every setting of the method (MethodInfo.early)."""
    return Arm(f"{info['label']} ({info['early']} on dev; {info['chooses']} by early stopping, patience {PATIENCE})",
               EARLY, rank=info["pooled_rank"], role=SUBJECT if info["subject"] else RIVAL, tunes=info["tunes"])


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
            r.skip = (f"incomplete arm: this configuration lacks seed(s) {seed_ranges(missing)} of the "
                      f"{len(seeds[task_of(r)])} its task ran with")
        else:
            kept.append(r)
    return kept


def seed_ranges(seeds) -> str:
    """'0, 2-39': integer seeds as sorted runs of consecutive ones (a study stopped midway lacks dozens)."""
    if not all(isinstance(s, int) for s in seeds):
        return ", ".join(sorted(map(str, seeds)))
    parts, ordered = [], sorted(seeds)
    for i, seed in enumerate(ordered):
        if i and seed == ordered[i - 1] + 1:
            parts[-1][1] = seed
        else:
            parts.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


class UnpairedRuns(ValueError):
    """Runs a page would pair do not match: one seed's runs disagree at ICL (step 1), or one configuration's runs
    declare different arms (a method's MethodInfo changed between them), so a pooled arm would hold some of its
    seeds only. A wrong page would be worse than none."""


def check_same_arms(runs: list[load.Run]) -> None:
    """Every run of one configuration belongs to the same arms (its seeds differ only in their seed)."""
    seen: dict[tuple, tuple[list[str], str]] = {}
    for run in runs:
        labels = arms_of(run)
        first = seen.setdefault(run.config_key(), (labels, run.id))
        if first[0] != labels:
            raise UnpairedRuns(
                f"runs of one configuration declare different arms: {first[1]} {first[0]} but {run.id} {labels} "
                f"(meta.json `method_info` differs: the method's declaration changed between them); re-run the "
                f"older runs so that every seed of an arm is in it")


def _row_arm(a: Arm) -> dict:
    """The arm's columns of a candidate row: its label (the grouping key), its Arm, its choice, rank and role."""
    return {"arm": a.label, "arm_spec": a, "choice": a.choice, "rank": a.rank, "role": a.role}


def candidates(runs: list[load.Run], metric: str = "acc") -> pd.DataFrame:
    """One row per (arm, run, step) with what a protocol needs to choose and to report."""
    check_same_arms(runs)
    rows = []
    for run in runs:
        meta, info = run.meta, method_info(run)
        simulate = bool(info["early"]) and meta.get("patience") is None  # a full run: simulate early stopping
        stop = early_stop([_pct(s.get("dev_" + metric)) for s in run.steps]) if simulate else 0
        early = early_arm(info) if simulate else None
        for s in run.steps:
            base = {"model": meta.get("model"), "task": meta.get("task"), "n_shot": meta.get("n_shot"),
                    "seed": meta.get("seed"), "run": run.id, "config": repr(run.config_key()), "setting_key": repr(run.setting_key()),
                    "method": run.method, "step1_is_icl": info["step1_is_icl"], "step": int(s["step"]),
                    "acc": _pct(s.get(metric)), "dev_acc": _pct(s.get("dev_" + metric)),
                    "tune_tokens": float(s.get("tune_tokens", np.nan) or 0),
                    "backward_tokens": float(s.get("backward_tokens", 0) or 0),
                    "prefix_tokens": float(s.get("prefix_tokens", np.nan) if s.get("prefix_tokens") is not None
                                           else np.nan),
                    "family": task_family(meta.get("task"), meta)}
            for arm in arms(run):
                rows.append({**base, **_row_arm(arm)})
            if base["step"] <= stop:  # what early stopping would have evaluated
                rows.append({**base, **_row_arm(early)})
    return pd.DataFrame(rows)


def _pct(x) -> float:
    return np.nan if x is None else 100.0 * float(x)


def icl_rows(cands: pd.DataFrame) -> pd.DataFrame:
    """Step 1 of every method with demonstrations, one per (model, task, n_shot, seed); they must agree."""
    first = cands[(cands["step"] == 1) & cands["step1_is_icl"]].drop_duplicates("run")
    group = ["model", "task", "n_shot", "seed"]
    spread = first.groupby(group)["acc"].agg(lambda a: a.max() - a.min())
    bad = spread[spread > 1e-6]
    if len(bad):
        cases = ", ".join(f"{task} seed {seed} ({gap:.0f} points)" for (_, task, _, seed), gap in bad.head(5).items())
        raise UnpairedRuns(
            f"step 1 (ICL) differs between runs of the same seed on {len(bad)} of {len(spread)} seeds ({cases}"
            f"{', ...' if len(bad) > 5 else ''}), so pairing them would compare unlike runs: they did not read the "
            f"same demonstrations or rows, or not with the same numerics (bf16-mixed and fp16 differ between "
            f"machines; meta.json `versions` names each run's CPU): run every arm of a page on one machine, or in fp32")
    first = first.sort_values("run").groupby(group, as_index=False).head(1)
    return first.assign(**{k: [v] * len(first) for k, v in _row_arm(ICL_ARM).items()})


def choose(cands: pd.DataFrame, protocol: str, tie=CHEAPEST) -> pd.DataFrame:
    """The (run, step) each arm picks per seed under a protocol ('dev' or 'eval'); ties by `tie`
    (ift/protocol.py; the page's rule is CHEAPEST). Candidates hold the chosen metric as acc / dev_acc."""
    return core.choose(cands, protocol, ["model", "task", "n_shot", "arm", "seed"], tie=tie)


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
    best = core.choose(mean, protocol, group, tie=tie)[[*group, "config", "step"]]
    return c.merge(best, on=[*group, "config", "step"])


def twin_arms(cands: pd.DataFrame) -> dict[str, str]:
    """{arm: the arm kept} for every arm that pools or picks steps (ALL, POOL, STEP) whose candidates, the (run,
    step) of each task and seed, are exactly another's: it always chooses the same, so a page lists it once,
    under the label it keeps: every setting's (the headline), else the one setting's (it names every setting),
    else a pool's. With one IFT setting run, IFT over every setting and that setting's own arm are one arm under
    two labels. Early stopping is its own rule and never a twin."""
    widest = {ALL: 0, STEP: 1, POOL: 2}
    specs = sorted((a for a in {a.label: a for a in cands["arm_spec"]}.values() if a.choice in widest),
                   key=lambda a: (widest[a.choice], a.rank, a.label))
    key = ["model", "task", "n_shot", "seed", "run", "step"]
    mine = cands[cands["arm"].isin([a.label for a in specs])]
    shape = {label: frozenset(g[key].itertuples(index=False, name=None)) for label, g in mine.groupby("arm")}
    first: dict[frozenset, str] = {}
    twins = {}
    for arm in specs:
        kept = first.setdefault(shape[arm.label], arm.label)
        if kept != arm.label:
            twins[arm.label] = kept
    return twins


def setting_arms(cands: pd.DataFrame) -> pd.DataFrame:
    """The subject's one-setting arms (choice STEP: IFT per mode, β and η), where each full run's steps appear
    exactly once."""
    return cands[(cands["role"] == SUBJECT) & (cands["choice"] == STEP)]
