"""The studies page's tables: every arm against ICL under both protocols, head to head, ties, spread, cost.

Arms are selected by their Arm fields (role, choice, rank: analysis.arms), never by a method's name; the
statistics and cells are analysis.core's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import load
from analysis.arms import (
    ALL,
    EARLY,
    ICL,
    ICL_ROLE,
    RIVAL,
    SUBJECT,
    Arm,
    arms,
    choose,
    choose_per_task,
    icl_rows,
    setting_arms,
)
from analysis.core import interval, marked, pm, ratio_cell, sd_ratio, seeds_for, signed, tokens, verdict
from analysis.methods import method_info, setting
from ift.protocol import CHEAPEST, COSTLIEST


def _ordered(table: pd.DataFrame, *first: str) -> pd.DataFrame:
    """Rows in the page's order: by `first`, then the arm's rank (Arm.rank), then its label."""
    return table.sort_values([*first, "rank", "arm"], kind="mergesort")


def main_arms(table: pd.DataFrame) -> pd.DataFrame:
    """The baselines, ICL and the subject overall (IFT: all settings chosen on dev, or early stopping)."""
    return table[(table["role"] != SUBJECT) | table["choice"].isin([ALL, EARLY])]


def subject_settings(table: pd.DataFrame) -> pd.DataFrame:
    """The subject per setting (IFT: position mode, β; and per η), and its runs stopped early at run time."""
    return table[(table["role"] == SUBJECT) & ~table["choice"].isin([ALL, EARLY])]


def _specs(frame: pd.DataFrame) -> list[Arm]:
    """The frame's arms, one Arm per label, in the page's order (rank, then label)."""
    specs = {a.label: a for a in frame["arm_spec"]}
    return sorted(specs.values(), key=lambda a: (a.rank, a.label))


def headline(frame: pd.DataFrame) -> str | None:
    """The subject's arm over every setting (IFT, mode, η, β and T on dev), if the frame has it."""
    return next((a.label for a in _specs(frame) if a.role == SUBJECT and a.choice == ALL), None)


def early(frame: pd.DataFrame) -> str | None:
    """The subject's simulated early-stopping arm, if the frame has it."""
    return next((a.label for a in _specs(frame) if a.role == SUBJECT and a.choice == EARLY), None)


def rivals(frame: pd.DataFrame) -> list[str]:
    """The baselines the subject must beat to be worth its cost, the ones that tune a prefix last (the gradient)."""
    mine = [a for a in _specs(frame) if a.role == RIVAL]
    return [a.label for a in mine if not a.tunes] + [a.label for a in mine if a.tunes]


def dev_candidates(cands: pd.DataFrame, group: list[str]) -> pd.Series:
    """Per `group` and seed, the distinct states the dev rows chose among: a setting's step once however many
    runs reached it (a run and its continuation to a larger T), and step 1 once for every method that starts
    from ICL's cache (all settings of a pooled arm share it)."""
    scored = cands.dropna(subset=["dev_acc"])
    icl = scored["step1_is_icl"].astype(bool) & (scored["step"] == 1)
    state = scored["setting_key"].where(~icl, "ICL") + "@" + scored["step"].where(~icl, 1).astype(str)
    return scored.assign(state=state).groupby([*group, "seed"])["state"].nunique()


def arm_table(cands: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, n_shot, arm): both protocols' accuracy and paired difference to ICL, and compute; `task_`:
    the paper's protocol with one choice per task (`choose_per_task`) instead of one per seed."""
    icl = icl_rows(cands)
    icl_by = icl.set_index(["model", "task", "n_shot", "seed"])["acc"]
    picks = {p: pd.concat([choose(cands, p), icl]) for p in ("dev", "eval")}
    picks["task_eval"] = pd.concat([choose_per_task(cands, "eval"), icl])
    rows = []
    group = ["model", "task", "n_shot", "arm"]
    offered = dev_candidates(cands, group)
    for key, honest in picks["dev"].groupby(group, sort=False):
        row = dict(zip(group, key))
        row["family"] = honest["family"].iloc[0]
        spec = honest["arm_spec"].iloc[0]  # the Arm: code selects rows by its fields, never by the label
        row["arm_spec"], row["role"], row["choice"], row["rank"] = spec, spec.role, spec.choice, spec.rank
        row["dev_candidates"] = [int(offered.get((*key, s), 1)) for s in sorted(honest["seed"])]  # ICL: step 1
        for p in ("dev", "eval", "task_eval"):
            mine = picks[p]
            mine = mine[(mine["model"] == key[0]) & (mine["task"] == key[1]) & (mine["n_shot"] == key[2])
                        & (mine["arm"] == key[3])].sort_values("seed")
            idx = list(zip(mine["model"], mine["task"], mine["n_shot"], mine["seed"]))
            base = icl_by.reindex(idx).to_numpy()
            row[f"{p}_mean"], row[f"{p}_ci"], n = interval(mine["acc"].tolist())
            if p != "task_eval":
                row["seeds"] = n
            row[f"{p}_delta"], row[f"{p}_delta_ci"], _ = interval((mine["acc"].to_numpy() - base).tolist())
            row[f"{p}_steps"] = [int(s) for s in mine["step"]]
            row[f"{p}_tune_tokens"] = float(mine["tune_tokens"].mean())
            row[f"{p}_backward_tokens"] = float(mine["backward_tokens"].mean())
            row[f"{p}_prefix_tokens"] = float(mine["prefix_tokens"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def format_arms(table: pd.DataFrame, arms=None) -> pd.DataFrame:
    """Display cells: how many distinct states dev chose among per seed (`dev_candidates`), honest accuracy and
    Δ vs ICL with intervals, the verdict, the paper protocol, compute (`arms`: labels to keep; default all)."""
    out = []
    t = table if arms is None else table[table["arm"].isin(arms)]
    for r in _ordered(t, "task").to_dict("records"):
        out.append({"task": r["task"], "method (choice)": r["arm"], "seeds": r["seeds"],
                    "dev candidates": span(r["dev_candidates"]),
                    "honest acc": pm(r["dev_mean"], r["dev_ci"]),
                    "honest Δ vs ICL": signed(r["dev_delta"], r["dev_delta_ci"]),
                    "verdict": verdict(r["dev_delta"], r["dev_delta_ci"]) if r["arm"] != ICL else "",
                    "paper acc (best on eval)": pm(r["eval_mean"], r["eval_ci"]),
                    "paper Δ": signed(r["eval_delta"], r["eval_delta_ci"]),
                    "dev-chosen steps": ", ".join(map(str, r["dev_steps"])),
                    "tuning fwd tokens": tokens(r["dev_tune_tokens"]),
                    "backward tokens": tokens(r["dev_backward_tokens"]) if r["dev_backward_tokens"] else "0",
                    "prefix tokens": tokens(r["dev_prefix_tokens"])})
    return pd.DataFrame(out)


def span(counts: list[int]) -> str:
    """'8', or '5-8' where the seeds differ."""
    return "–" if not counts else str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def overview(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm over tasks: the mean of the tasks' honest Δ with a 95% t-interval over tasks (how far the gain
    carries from task to task), and on how many tasks it is better / no different / worse."""
    rows = []
    for arm, g in table[table["role"] != ICL_ROLE].groupby("arm"):
        v = [verdict(d, h) for d, h in zip(g["dev_delta"], g["dev_delta_ci"])]
        rows.append({"method (choice)": arm, "tasks": len(g),
                     "mean honest Δ (± over tasks)": signed(*interval(g["dev_delta"].tolist())[:2]),
                     "better": v.count("better"), "no difference": v.count("no difference"),
                     "worse": v.count("worse"), "mean paper Δ": signed(*interval(g["eval_delta"].tolist())[:2]),
                     "mean paper Δ, one T per task": signed(*interval(g["task_eval_delta"].tolist())[:2]),
                     "rank": g["rank"].iloc[0], "arm": arm})
    return _ordered(pd.DataFrame(rows)).drop(columns=["rank", "arm"]) if rows else pd.DataFrame()

def _matrix_arms(table: pd.DataFrame) -> list[str]:
    """The by-task columns: the baselines that tune nothing, the subject's early-stopping and overall arms, then
    the baselines that tune a prefix (one per setting)."""
    specs = {a.label: a for a in _specs(table)}
    first = [a for a in rivals(table) if not specs[a].tunes]
    return first + [a for a in (early(table), headline(table)) if a] + [a for a in rivals(table) if specs[a].tunes]


def task_matrix(table: pd.DataFrame, target: float = 3.0) -> pd.DataFrame:
    """One row per task: ICL accuracy, each main arm's honest Δ vs ICL (▲ better, ▼ worse: the paired 95%
    interval excludes 0), IFT's Δ under the paper's protocol, and the seeds IFT's Δ would need for ± target."""
    arms, top = _matrix_arms(table), headline(table)
    rows = []
    for (model, task, n_shot), g in table.groupby(["model", "task", "n_shot"], sort=True):
        g = g.set_index("arm")
        if ICL not in g.index:
            continue
        row = {"task": task, "n_shot": n_shot, "seeds": int(g.loc[ICL, "seeds"]),
               "ICL acc": pm(g.loc[ICL, "dev_mean"], g.loc[ICL, "dev_ci"])}
        for arm in arms:
            if arm not in g.index:
                row[arm] = "–"
                continue
            row[arm] = marked(g.loc[arm, "dev_delta"], g.loc[arm, "dev_delta_ci"])
        if top in g.index:
            r = g.loc[top]
            row["IFT, paper protocol Δ"] = signed(r["eval_delta"], r["eval_delta_ci"])
            row["IFT, paper protocol Δ, one T per task"] = signed(r["task_eval_delta"], r["task_eval_delta_ci"])
            need = seeds_for(r["dev_delta_ci"], int(r["seeds"]), target)
            row[f"seeds for ±{target:g} on IFT Δ"] = "–" if need is None else str(need)
        rows.append(row)
    return pd.DataFrame(rows)


def head_to_head(cands: pd.DataFrame, arm: str | None = None) -> pd.DataFrame:
    """Per task: `arm`'s (default the headline's) honest accuracy minus each baseline's, paired by seed (both chosen on dev, on the same
    seed's demonstrations and rows), ▲ / ▼ where the 95% interval excludes 0; then a row with the mean over
    tasks and its interval over tasks. Beating ICL is not enough when a cheaper baseline beats ICL by more."""
    picks = choose(cands, "dev")
    arm = arm or headline(picks)
    others = rivals(picks)
    rows, per_rival = [], {r: [] for r in others}
    for (model, task, n_shot), g in picks.groupby(["model", "task", "n_shot"], sort=True):
        mine = g[g["arm"] == arm].set_index("seed")["acc"]
        if mine.empty:
            continue
        row = {"task": task, "n_shot": n_shot, "seeds": len(mine)}
        for rival in others:
            theirs = g[g["arm"] == rival].set_index("seed")["acc"]
            common = mine.index.intersection(theirs.index)
            if common.empty:
                row[f"− {rival}"] = "–"
                continue
            d, h, _ = interval((mine[common] - theirs[common]).tolist())
            per_rival[rival].append(d)
            row[f"− {rival}"] = marked(d, h)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    mean = {"task": "mean over tasks", "n_shot": "", "seeds": ""}
    for rival, deltas in per_rival.items():
        d, h, n = interval(deltas)
        mean[f"− {rival}"] = f"{signed(d, h)} ({n} tasks)" if n else "–"
    # the choosing gains more the more candidates an arm offers: each side's count, beside the differences
    group = ["model", "task", "n_shot", "arm"]
    offered = dev_candidates(cands, group)
    counts = {a: span([int(offered.get(key, 1)) for key in  # ICL-only arms (zero-shot): their one step
                       picks.loc[picks["arm"] == a, [*group, "seed"]].itertuples(index=False, name=None)])
              for a in [arm, *others]}
    candidates = {"task": f"dev candidates per seed; {arm}: {counts[arm]}", "n_shot": "", "seeds": "",
                  **{f"− {rival}": counts[rival] for rival in others}}
    return pd.DataFrame(rows + [mean, candidates])


TIES = {"earliest": CHEAPEST, "latest": COSTLIEST}  # the page's tie rule first (ift/protocol.py)


def tie_sensitivity(cands: pd.DataFrame, arms=None) -> pd.DataFrame:
    """Per task and main subject arm (default the headline and early stopping): the honest Δ vs ICL when equal dev scores go to the earliest (cheapest) choice,
    the page's rule, and to the latest (costliest), ▲ / ▼ where the paired interval excludes 0; how many seeds'
    picks move; then per arm the mean over tasks with its t-interval over tasks."""
    if arms is None:
        arms = [a for a in (headline(cands), early(cands)) if a] if not cands.empty else []
    cands = cands[cands["arm"].isin(arms)]
    if cands.empty:
        return pd.DataFrame()
    icl = icl_rows(cands).set_index(["model", "task", "n_shot", "seed"])["acc"]
    picks = {name: choose(cands, "dev", tie).set_index(["model", "task", "n_shot", "arm", "seed"]).sort_index()
             for name, tie in TIES.items()}
    rows, per_arm = [], {}
    for (model, task, n_shot, arm), first in picks["earliest"].groupby(level=[0, 1, 2, 3], sort=True):
        row = {"task": task, "n_shot": n_shot, "method (choice)": arm, "seeds": len(first)}
        moved = 0
        for name, frame in picks.items():
            mine = frame.loc[first.index]
            deltas = mine["acc"].to_numpy() - icl.reindex(first.index.droplevel("arm")).to_numpy()
            d, h, _ = interval(deltas.tolist())
            row[f"honest Δ, ties to the {name} step"] = marked(d, h)
            per_arm.setdefault(arm, {}).setdefault(name, []).append(d)
            moved = int(((mine["run"] != first["run"]) | (mine["step"] != first["step"])).sum())
        row["seeds whose pick moves"] = moved
        rows.append(row)
    order = {a: i for i, a in enumerate(arms)}
    rows.sort(key=lambda r: (r["task"], order[r["method (choice)"]]))
    for arm in sorted(per_arm, key=order.get):
        mean = {"task": "mean over tasks", "n_shot": "", "method (choice)": arm, "seeds": ""}
        for name, deltas in per_arm[arm].items():
            d, h, n = interval(deltas)
            mean[f"honest Δ, ties to the {name} step"] = f"{marked(d, h)} ({n} tasks)"
        mean["seeds whose pick moves"] = ""
        rows.append(mean)
    return pd.DataFrame(rows)


SPREAD_MIN_SEEDS = 10  # a standard deviation's bootstrap interval from fewer seeds says little


def spread_table(cands: pd.DataFrame, min_seeds: int = SPREAD_MIN_SEEDS) -> pd.DataFrame:
    """How much each method's accuracy depends on which demonstrations a seed drew: per task with at least
    `min_seeds` seeds, ICL's standard deviation over seeds and each main arm's, as a ratio to ICL's with a
    paired bootstrap interval (▼: the arm's accuracy spreads less than ICL's; ▲: more). A seed also draws its
    evaluation rows: zero-shot, which reads no demonstrations, shows that share of the spread."""
    picks = choose(cands, "dev")
    icl = {key: g.set_index("seed")["acc"].sort_index()
           for key, g in icl_rows(cands).groupby(["model", "task", "n_shot"], sort=True)}
    specs = {a.label: a for a in _specs(picks)}
    arms = [a for a in (headline(picks), early(picks)) if a] + [a for a in rivals(picks) if specs[a].demos]
    zero_shot = next((a for a in rivals(picks) if not specs[a].demos), None)  # reads no demonstrations
    rows = []
    for (model, task, n_shot), g in picks.groupby(["model", "task", "n_shot"], sort=True):
        base = icl.get((model, task, n_shot))
        if base is None or len(base) < min_seeds:
            continue
        zero = g[g["arm"] == zero_shot]["acc"]
        row = {"task": task, "n_shot": n_shot, "seeds": len(base), "ICL sd": f"{base.std(ddof=1):.1f}",
               "zero-shot sd (rows only)": f"{zero.std(ddof=1):.1f}" if len(zero) >= min_seeds else "–"}
        for arm in arms:
            mine = g[g["arm"] == arm].set_index("seed")["acc"].sort_index()
            common = mine.index.intersection(base.index)
            row[f"{arm}: sd / ICL sd"] = ("–" if len(common) < min_seeds
                                          else ratio_cell(*sd_ratio(base[common], mine[common])))
        rows.append(row)
    return pd.DataFrame(rows)


def longer_tuning(cands: pd.DataFrame, short: int = 8) -> pd.DataFrame:
    """Does tuning past `short` steps pay? Per task and IFT setting whose runs go beyond `short` steps: the honest
    Δ vs ICL when dev chooses among steps ≤ short and among all steps, and their paired difference."""
    ift = setting_arms(cands)
    icl = icl_rows(cands).set_index(["task", "n_shot", "seed"])["acc"]
    rows = []
    for (task, n_shot, arm), g in ift.groupby(["task", "n_shot", "arm"], sort=True):
        longest = int(g["step"].max())
        if longest <= short:
            continue
        picks = {limit: choose(g[g["step"] <= limit], "dev").set_index("seed") for limit in (short, longest)}
        seeds = sorted(picks[longest].index.intersection(picks[short].index))
        base = icl.reindex([(task, n_shot, s) for s in seeds]).to_numpy()
        spec = g["arm_spec"].iloc[0]
        row = {"task": task, "setting": spec.setting, "seeds": len(seeds)}
        for limit in (short, longest):
            d, h, _ = interval((picks[limit].loc[seeds, "acc"].to_numpy() - base).tolist())
            row[f"honest Δ vs ICL, T ≤ {limit}"] = signed(d, h)
        d, h, _ = interval((picks[longest].loc[seeds, "acc"] - picks[short].loc[seeds, "acc"]).tolist())
        row[f"T ≤ {longest} − T ≤ {short}"] = marked(d, h)
        row[f"dev-chosen steps (T ≤ {longest})"] = ", ".join(str(int(x)) for x in picks[longest].loc[seeds, "step"])
        rows.append(row)
    return pd.DataFrame(rows)


def cost_table(runs: list[load.Run]) -> pd.DataFrame:
    """What each method cost here, per task: wall time of a whole run (every step tuned and scored on the
    evaluation and dev rows), per step (mean wall time over mean steps), and the tuning tokens of its last step.
    A run continued to a larger T counts once, as the longer run (whose steps hold the shorter one's)."""
    rows = []
    for run in load.longest(runs)[0]:
        m, info = run.meta, method_info(run)
        label = setting(info, m) if info["pools"] else arms(run)[0].label  # a pooled method: per setting
        steps = run.steps
        rows.append({"task": m.get("task"), "method": label, "steps": len(steps),
                     "wall_s": sum(float(s.get("time_s") or 0) for s in steps),
                     "rows": int(m.get("n_eval") or 0) + int(m.get("n_dev") or 0),
                     "tune_tokens": float(steps[-1].get("tune_tokens") or 0) if steps else np.nan,
                     "backward_tokens": float(steps[-1].get("backward_tokens") or 0) if steps else np.nan})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    g = frame.groupby(["task", "method"], sort=True)
    out = g.agg(runs=("steps", "size"), steps=("steps", "mean"), every=("steps", list), rows=("rows", "mean"),
                wall_s=("wall_s", "mean"), tune_tokens=("tune_tokens", "mean"),
                backward_tokens=("backward_tokens", "mean")).reset_index()
    out["s per step"] = (out["wall_s"] / out["steps"]).map(lambda v: f"{v:.1f}")
    out["wall s per run"] = out["wall_s"].map(lambda v: f"{v:.0f}")
    out["tuning fwd tokens (last step)"] = out["tune_tokens"].map(tokens)
    out["backward tokens"] = out["backward_tokens"].map(tokens)
    out["scored rows per step"] = out["rows"].map(lambda v: f"{v:.0f}")
    out["steps"] = out["every"].map(span)  # a range where runs differ (a model window that fits fewer r per seed)
    return out[["task", "method", "runs", "steps", "scored rows per step", "wall s per run", "s per step",
                "tuning fwd tokens (last step)", "backward tokens"]]
