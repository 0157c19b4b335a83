"""The studies page: every method against ICL on the same demonstrations and rows, under both protocols.

    python -m analysis.study results/studies --out docs/results

A *method* run (meta `method`: ift, zero_shot, repeat, more_demos, grad) records one row per step of its
own knob (IFT: tuning step; repeat: copies of the demonstrations; more_demos: multiple of n_shot; grad:
Adam steps + 1), each with eval and dev accuracy and its compute. An *arm* is a method together with the
settings a protocol may choose among. For each task and seed an arm picks one (run, step):

- honest (`dev`): the highest dev accuracy; ties go to the cheaper choice (fewer tuning tokens, then the
  earlier step, so a flat curve reports plain ICL);
- the paper's (`eval`): the highest evaluation accuracy over the same choices (optimistic by design);

and reports that choice's evaluation accuracy. ICL is step 1, identical in every run of a seed (same
demonstrations; checked). Over seeds: the mean and a 95% Student-t interval; the difference to ICL is
paired by seed (same demonstrations, same evaluation rows).
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import cli, load  # noqa: E402

# analysis.study is the public face of the page: the protocol (arms.py) and statistics (stats.py) re-exported
from analysis.arms import (  # noqa: E402,F401
    ALL,
    BASELINE_ARMS,
    COLUMNS,
    EARLY,
    ETA,
    ETA_ARM,
    ICL,
    IFT_ALL,
    IFT_EARLY,
    PATIENCE,
    STEP,
    ZERO,
    Arm,
    arms_of,
    candidates,
    choose,
    choose_per_task,
    drop_incomplete,
    early_stop,
    icl_rows,
    ift_setting,
    ift_step_arms,
    method,
)
from analysis.stats import BOOTSTRAP_RESAMPLES, half_width, interval, ratio_cell, sd_ratio, seeds_for, verdict  # noqa: E402,F401
from analysis.stats import marked as _marked  # noqa: E402
from analysis.stats import pm as _pm  # noqa: E402
from analysis.stats import signed as _signed  # noqa: E402
from analysis.tables import markdown_table  # noqa: E402
from ift.protocol import CHEAPEST, COSTLIEST  # noqa: E402

PAPER_PROTOCOLS = (
    "*Paper Δ* is the paper's protocol as implemented here: for each seed, the step (and setting) with the best "
    "evaluation accuracy. *One T per task*: one step (and setting) per task and method, the best on the evaluation "
    "accuracy averaged over seeds, then Δ vs ICL paired by seed at it. The paper reports one number per model and "
    "task, \"the best results obtained within Tmax steps\" (§4.2, RQ1), and names no seeds or averaging over runs: "
    "with one run per task the two coincide; with several, one T per task is the closer reading of its tables.")


def _tokens(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.0f}"


def _ordered(table: pd.DataFrame, *first: str) -> pd.DataFrame:
    """Rows in the page's order: by `first`, then the arm's rank (Arm.rank), then its label."""
    return table.sort_values([*first, "rank", "arm"], kind="mergesort")


def main_arms(table: pd.DataFrame) -> pd.DataFrame:
    """The baselines, ICL and IFT overall (all settings chosen on dev, or early stopping)."""
    return table[(table["method"] != "ift") | table["choice"].isin([ALL, EARLY])]


def ift_settings(table: pd.DataFrame) -> pd.DataFrame:
    """IFT per setting (position mode, β) and per η, and IFT runs stopped early at run time."""
    return table[(table["method"] == "ift") & ~table["choice"].isin([ALL, EARLY])]


def arm_table(cands: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, n_shot, arm): both protocols' accuracy and paired difference to ICL, and compute; `task_`:
    the paper's protocol with one choice per task (`choose_per_task`) instead of one per seed."""
    icl = icl_rows(cands)
    icl_by = icl.set_index(["model", "task", "n_shot", "seed"])["acc"]
    picks = {p: pd.concat([choose(cands, p), icl]) for p in ("dev", "eval")}
    picks["task_eval"] = pd.concat([choose_per_task(cands, "eval"), icl])
    rows = []
    group = ["model", "task", "n_shot", "arm"]
    for key, honest in picks["dev"].groupby(group, sort=False):
        row = dict(zip(group, key))
        row["family"] = honest["family"].iloc[0]
        spec = honest["arm_spec"].iloc[0]  # the Arm: code selects rows by its fields, never by the label
        row["method"], row["choice"], row["rank"] = spec.method, spec.choice, spec.rank
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
    """Display cells: honest accuracy and Δ vs ICL with intervals, the verdict, the paper protocol, compute
    (`arms`: labels to keep; default all)."""
    out = []
    t = table if arms is None else table[table["arm"].isin(arms)]
    for r in _ordered(t, "task").to_dict("records"):
        out.append({"task": r["task"], "method (choice)": r["arm"], "seeds": r["seeds"],
                    "honest acc": _pm(r["dev_mean"], r["dev_ci"]),
                    "honest Δ vs ICL": _signed(r["dev_delta"], r["dev_delta_ci"]),
                    "verdict": verdict(r["dev_delta"], r["dev_delta_ci"]) if r["arm"] != ICL else "",
                    "paper acc (best on eval)": _pm(r["eval_mean"], r["eval_ci"]),
                    "paper Δ": _signed(r["eval_delta"], r["eval_delta_ci"]),
                    "dev-chosen steps": ", ".join(map(str, r["dev_steps"])),
                    "tuning fwd tokens": _tokens(r["dev_tune_tokens"]),
                    "backward tokens": _tokens(r["dev_backward_tokens"]) if r["dev_backward_tokens"] else "0",
                    "prefix tokens": _tokens(r["dev_prefix_tokens"])})
    return pd.DataFrame(out)


def overview(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm over tasks: the mean of the tasks' honest Δ with a 95% t-interval over tasks (how far the gain
    carries from task to task), and on how many tasks it is better / no different / worse."""
    rows = []
    for arm, g in table[table["method"] != "icl"].groupby("arm"):
        v = [verdict(d, h) for d, h in zip(g["dev_delta"], g["dev_delta_ci"])]
        rows.append({"method (choice)": arm, "tasks": len(g),
                     "mean honest Δ (± over tasks)": _signed(*interval(g["dev_delta"].tolist())[:2]),
                     "better": v.count("better"), "no difference": v.count("no difference"),
                     "worse": v.count("worse"), "mean paper Δ": _signed(*interval(g["eval_delta"].tolist())[:2]),
                     "mean paper Δ, one T per task": _signed(*interval(g["task_eval_delta"].tolist())[:2]),
                     "rank": g["rank"].iloc[0], "arm": arm})
    return _ordered(pd.DataFrame(rows)).drop(columns=["rank", "arm"]) if rows else pd.DataFrame()

MATRIX_ARMS = (ZERO, BASELINE_ARMS["repeat"], BASELINE_ARMS["more_demos"], IFT_EARLY, IFT_ALL)  # then gradients


def _present(frame: pd.DataFrame, arms) -> list[str]:
    """Those of `arms` that `frame` has, in that order, then its gradient-tuning arms (one per learning rate)."""
    have = set(frame["arm"])
    return [a for a in arms if a in have] + sorted(frame[frame["method"] == "grad"]["arm"].unique())


def task_matrix(table: pd.DataFrame, target: float = 3.0) -> pd.DataFrame:
    """One row per task: ICL accuracy, each main arm's honest Δ vs ICL (▲ better, ▼ worse: the paired 95%
    interval excludes 0), IFT's Δ under the paper's protocol, and the seeds IFT's Δ would need for ± target."""
    arms = _present(table, MATRIX_ARMS)
    rows = []
    for (model, task, n_shot), g in table.groupby(["model", "task", "n_shot"], sort=True):
        g = g.set_index("arm")
        if ICL not in g.index:
            continue
        row = {"task": task, "n_shot": n_shot, "seeds": int(g.loc[ICL, "seeds"]),
               "ICL acc": _pm(g.loc[ICL, "dev_mean"], g.loc[ICL, "dev_ci"])}
        for arm in arms:
            if arm not in g.index:
                row[arm] = "–"
                continue
            row[arm] = _marked(g.loc[arm, "dev_delta"], g.loc[arm, "dev_delta_ci"])
        if IFT_ALL in g.index:
            r = g.loc[IFT_ALL]
            row["IFT, paper protocol Δ"] = _signed(r["eval_delta"], r["eval_delta_ci"])
            row["IFT, paper protocol Δ, one T per task"] = _signed(r["task_eval_delta"], r["task_eval_delta_ci"])
            need = seeds_for(r["dev_delta_ci"], int(r["seeds"]), target)
            row[f"seeds for ±{target:g} on IFT Δ"] = "–" if need is None else str(need)
        rows.append(row)
    return pd.DataFrame(rows)


def _rivals(picks: pd.DataFrame) -> list[str]:
    """The baselines IFT must beat to be worth its cost: zero-shot, re-reading, more demonstrations, the gradient."""
    return _present(picks, (ZERO, BASELINE_ARMS["repeat"], BASELINE_ARMS["more_demos"]))


def head_to_head(cands: pd.DataFrame, arm: str = IFT_ALL) -> pd.DataFrame:
    """Per task: `arm`'s honest accuracy minus each baseline's, paired by seed (both chosen on dev, on the same
    seed's demonstrations and rows), ▲ / ▼ where the 95% interval excludes 0; then a row with the mean over
    tasks and its interval over tasks. Beating ICL is not enough when a cheaper baseline beats ICL by more."""
    picks = choose(cands, "dev")
    rivals = _rivals(picks)
    rows, per_rival = [], {r: [] for r in rivals}
    for (model, task, n_shot), g in picks.groupby(["model", "task", "n_shot"], sort=True):
        mine = g[g["arm"] == arm].set_index("seed")["acc"]
        if mine.empty:
            continue
        row = {"task": task, "n_shot": n_shot, "seeds": len(mine)}
        for rival in rivals:
            theirs = g[g["arm"] == rival].set_index("seed")["acc"]
            common = mine.index.intersection(theirs.index)
            if common.empty:
                row[f"− {rival}"] = "–"
                continue
            d, h, _ = interval((mine[common] - theirs[common]).tolist())
            per_rival[rival].append(d)
            row[f"− {rival}"] = _marked(d, h)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    mean = {"task": "mean over tasks", "n_shot": "", "seeds": ""}
    for rival, deltas in per_rival.items():
        d, h, n = interval(deltas)
        mean[f"− {rival}"] = f"{_signed(d, h)} ({n} tasks)" if n else "–"
    return pd.DataFrame(rows + [mean])


TIES = {"earliest": CHEAPEST, "latest": COSTLIEST}  # the page's tie rule first (ift/protocol.py)


def tie_sensitivity(cands: pd.DataFrame, arms=(IFT_ALL, IFT_EARLY)) -> pd.DataFrame:
    """Per task and main IFT arm: the honest Δ vs ICL when equal dev scores go to the earliest (cheapest) choice,
    the page's rule, and to the latest (costliest), ▲ / ▼ where the paired interval excludes 0; how many seeds'
    picks move; then per arm the mean over tasks with its t-interval over tasks."""
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
            row[f"honest Δ, ties to the {name} step"] = _marked(d, h)
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
            mean[f"honest Δ, ties to the {name} step"] = f"{_marked(d, h)} ({n} tasks)"
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
    arms = _present(picks, (IFT_ALL, IFT_EARLY, BASELINE_ARMS["repeat"], BASELINE_ARMS["more_demos"]))
    rows = []
    for (model, task, n_shot), g in picks.groupby(["model", "task", "n_shot"], sort=True):
        base = icl.get((model, task, n_shot))
        if base is None or len(base) < min_seeds:
            continue
        zero = g[g["arm"] == ZERO]["acc"]
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
    ift = ift_step_arms(cands)
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
        row = {"task": task, "setting": f"{spec.setting} η={spec.eta:g}", "seeds": len(seeds)}
        for limit in (short, longest):
            d, h, _ = interval((picks[limit].loc[seeds, "acc"].to_numpy() - base).tolist())
            row[f"honest Δ vs ICL, T ≤ {limit}"] = _signed(d, h)
        d, h, _ = interval((picks[longest].loc[seeds, "acc"] - picks[short].loc[seeds, "acc"]).tolist())
        row[f"T ≤ {longest} − T ≤ {short}"] = _marked(d, h)
        row[f"dev-chosen steps (T ≤ {longest})"] = ", ".join(str(int(x)) for x in picks[longest].loc[seeds, "step"])
        rows.append(row)
    return pd.DataFrame(rows)


def cost_table(runs: list[load.Run]) -> pd.DataFrame:
    """What each method cost here, per task: wall time of a whole run (every step tuned and scored on the
    evaluation and dev rows), per step, and the tuning tokens of its last step. A run continued to a larger T
    counts once, as the longer run (whose steps hold the shorter one's)."""
    rows = []
    for run in load.longest(runs)[0]:
        m = run.meta
        label = ift_setting(m) + f" η={float(m.get('eta')):g}" if method(run) == "ift" else arms_of(run)[0]
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
    out = g.agg(runs=("steps", "size"), steps=("steps", "mean"), rows=("rows", "mean"), wall_s=("wall_s", "mean"),
                tune_tokens=("tune_tokens", "mean"), backward_tokens=("backward_tokens", "mean")).reset_index()
    out["s per step"] = (out["wall_s"] / out["steps"]).map(lambda v: f"{v:.1f}")
    out["wall s per run"] = out["wall_s"].map(lambda v: f"{v:.0f}")
    out["tuning fwd tokens (last step)"] = out["tune_tokens"].map(_tokens)
    out["backward tokens"] = out["backward_tokens"].map(_tokens)
    out["scored rows per step"] = out["rows"].map(lambda v: f"{v:.0f}")
    out["steps"] = out["steps"].map(lambda v: f"{v:g}")
    return out[["task", "method", "runs", "steps", "scored rows per step", "wall s per run", "s per step",
                "tuning fwd tokens (last step)", "backward tokens"]]


# ---------------------------------------------------------------- figures

def curves_figure(cands: pd.DataFrame) -> plt.Figure | None:
    """Evaluation accuracy vs step per IFT setting (mean over seeds), one panel per task, ICL dashed."""
    ift = ift_step_arms(cands)
    if ift.empty:
        return None
    tasks = sorted(ift["task"].unique())
    # one colour per setting on every panel (tasks differ in which settings they ran)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {arm: palette[i % len(palette)] for i, arm in enumerate(sorted(ift["arm"].unique()))}
    cols = min(len(tasks), 3)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.remove()
    for ax, task in zip(axes.flat, tasks):
        part = ift[ift["task"] == task]
        # only the seeds every setting has, so that the lines (and ICL) average the same demonstrations
        common = set.intersection(*(set(g["seed"]) for _, g in part.groupby("arm")))
        part = part[part["seed"].isin(common)]
        for arm, g in sorted(part.groupby("arm")):
            curve = g.groupby("step")["acc"].mean()
            spec = g["arm_spec"].iloc[0]
            ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=2.5, linewidth=1.2, color=colour[arm],
                    label=f"{spec.mode} β={spec.beta:g} η={spec.eta:g}")
        icl = part[part["step"] == 1]["acc"].mean()
        ax.axhline(icl, color="black", linestyle="--", linewidth=1, label="ICL")
        ax.set_title(f"{task} ({len(common)} seeds)")
        ax.set_xlabel("step T (1 = ICL)")
        ax.set_ylabel("eval accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    legend = {}  # every setting once, whichever panel drew it
    for ax in axes.flat[:len(tasks)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels = list(legend)
    fig.legend(list(legend.values()), labels, loc="lower center", ncol=min(len(labels), 4), fontsize="small",
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 5), 1, 1))
    return fig


def delta_figure(table: pd.DataFrame) -> plt.Figure | None:
    """Honest Δ vs ICL with its 95% interval, per task and arm (arms: the baselines and the overall IFT)."""
    keep = table[(table["method"] != "icl") & ~((table["method"] == "ift") & table["choice"].isin([STEP, ETA]))]
    if keep.empty:
        return None
    arms = list(dict.fromkeys(_ordered(keep)["arm"]))
    tasks = sorted(keep["task"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * (len(keep) + 0.6 * len(tasks)) + 1.2))  # one row per task and arm
    y, ticks, labels = 0, [], []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for task in tasks:
        for i, arm in enumerate(arms):
            r = keep[(keep["task"] == task) & (keep["arm"] == arm)]
            if r.empty:
                continue
            d, h = float(r["dev_delta"].iloc[0]), float(r["dev_delta_ci"].iloc[0])
            ax.errorbar(d, y, xerr=0 if math.isnan(h) else h, fmt="o", color=colors[i % len(colors)], capsize=3)
            ticks.append(y)
            labels.append(f"{task}: {arm}")
            y -= 1
        y -= 0.6
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.set_xlabel("accuracy − ICL (points), dev-chosen, mean ± 95% CI over seeds")
    fig.tight_layout()
    return fig


def cosine_frame(runs: list[load.Run]) -> pd.DataFrame:
    """Per (task, seed, position mode, K/V, layer): cosine between IFT's G and the true descent direction."""
    rows = []
    for run in runs:
        cos = run.meta.get("pseudo_grad_cosine") or {}
        for mode, kv in cos.items():
            for which, values in kv.items():
                for layer, c in enumerate(values):
                    if c is None:  # a zero vector: no direction to compare
                        continue
                    rows.append({"task": run.meta.get("task"), "seed": run.meta.get("seed"), "mode": mode,
                                 "which": which, "layer": layer, "cos": float(c)})
    return pd.DataFrame(rows)


def cosine_figure(frame: pd.DataFrame) -> plt.Figure | None:
    if frame.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, which in zip(axes, ("k", "v")):
        part = frame[frame["which"] == which]
        for mode, g in part.groupby("mode"):
            m = g.groupby("layer")["cos"].agg(["mean", "min", "max"])
            (line,) = ax.plot(m.index + 1, m["mean"], marker="o", markersize=3, label=mode)
            ax.fill_between(m.index + 1, m["min"], m["max"], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"cos(G_{which.upper()}, −∇ leave-one-out loss)")
        ax.set_xlabel("layer")
    axes[0].set_ylabel("cosine (mean; band: min-max over tasks, seeds)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90, bbox_inches="tight")  # long tick labels would otherwise push labels off the edge
    plt.close(fig)
    return path


def cosine_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Signed means say whether G leans towards −∇ on average; the |cos| columns say how far single runs and
    layers stray from 0 (a mean of ≈ 0 is no consistent alignment, not orthogonality run by run)."""
    rows = []
    for (mode, which), g in frame.groupby(["mode", "which"]):
        per_run = g.groupby(["task", "seed"])["cos"].mean()
        rows.append({"position mode": mode, "K/V": which.upper(), "mean cosine over layers": f"{per_run.mean():.3f}",
                     "min layer mean": f"{g.groupby('layer')['cos'].mean().min():.3f}",
                     "max layer mean": f"{g.groupby('layer')['cos'].mean().max():.3f}",
                     "mean |cos| (run, layer)": f"{g['cos'].abs().mean():.3f}",
                     "largest |cos| (run, layer)": f"{g['cos'].abs().max():.3f}",
                     "runs": len(per_run)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the page

def _cpu_kind(run: load.Run) -> str:
    versions = run.meta.get("versions") or {}
    amx = versions.get("cpu_amx")
    if amx is None:
        return "CPU kind not recorded"
    return f"{versions.get('cpu') or 'unknown CPU'} {'with' if amx else 'without'} AMX"


def precision_note(runs: list[load.Run]) -> str | None:
    """A warning when the page's bf16-mixed runs come from more than one CPU kind, else None.

    bf16 products round differently on CPUs with and without AMX (docs/results.md, Precision), so such a page
    is reproduced to the digit on no single machine, and its ICL or zero-shot rows may move by a row or so
    between kinds. fp32 runs are not counted (their last bits do not move a prediction in practice)."""
    kinds = Counter(_cpu_kind(r) for r in runs if r.meta.get("dtype") == "bf16-mixed")
    if len(kinds) < 2:
        return None
    parts = "; ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    return (f"**Mixed CPU kinds.** This page's bf16-mixed runs come from more than one kind of CPU ({parts}). "
            "bf16 products round differently with and without AMX, so re-running them on one machine will not "
            "give this page to the digit; rerun the runs of one kind on the other (or in fp32) for a page that "
            "does.\n")


def setup_table(runs: list[load.Run]) -> pd.DataFrame | None:
    """Per task, the model and precision its runs used, when the page mixes them, else None.

    A page built from several studies' archives can put a bf16-mixed task beside an fp32 one (or two models'
    tasks side by side): each task's Δ is still paired within its own runs, but the mean over tasks pools
    them, and a reader must see that before reading it."""
    counts = Counter((r.meta.get("task"), r.meta.get("model"), r.meta.get("dtype") or "not recorded") for r in runs)
    if len({(model, dtype) for _, model, dtype in counts}) < 2:
        return None
    return pd.DataFrame([{"task": task, "model": model, "precision": dtype, "runs": n}
                         for (task, model, dtype), n in sorted(counts.items(), key=lambda kv: tuple(map(str, kv[0])))])


def build(runs: list[load.Run], out: Path, metric: str = "acc", title: str = "Study results",
          max_step: int | None = None) -> Path:
    """The page. With `max_step`, every choice is made among steps ≤ max_step but in *Tuning longer*, which
    sets that against all steps: a study whose runs are being continued past max_step keeps its headline."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good = drop_incomplete([r for r in load.used(runs) if r.mode == "tune"])
    every_step = candidates(good, metric)
    cands = every_step if max_step is None or every_step.empty else every_step[every_step["step"] <= max_step]
    limit = "" if max_step is None else (f" Every table and figure but *Tuning longer* chooses among steps ≤ "
                                         f"{max_step} (step 1 = ICL); runs continued past it count there only.")
    md = [f"# {title}\n", f"Generated by `python -m analysis.study` from {len(good)} runs "
          f"({len(load.skipped(runs))} skipped, listed at the end). Metric `{metric}`, in %.{limit}\n",
          __doc__.split("\n\n", 2)[2].strip() + "\n"]
    note = precision_note(good)
    if note:
        md.append(note)
    setups = setup_table(good)
    if setups is not None:
        md += ["**Mixed models or precisions.** This page's runs are not all one model in one precision; per task:\n",
               markdown_table(setups) + "\n"]
    if cands.empty:
        md.append("No usable runs.\n")
    else:
        table = arm_table(cands)
        md += ["## Overview: every method against ICL\n",
               "Honest Δ = dev-chosen accuracy − ICL, paired by seed. *better* / *worse*: on that task, the 95% "
               "interval of the paired difference excludes 0. The mean over tasks has a 95% t-interval over tasks "
               "(each task's mean Δ one value): it says whether the gain carries across tasks.\n",
               PAPER_PROTOCOLS + "\n", markdown_table(overview(table)) + "\n"]
        md += ["## By task\n",
               "Honest Δ vs ICL (points, mean ± 95% interval over seeds, paired); ▲ / ▼: the interval excludes 0. "
               "The last column: how many seeds IFT's Δ would need for an interval of ± 3 points, if the "
               "seed-to-seed spread stays as measured (demonstrations, not evaluation rows, dominate it).\n",
               markdown_table(task_matrix(table)) + "\n"]
        fig = delta_figure(table)
        if fig is not None:
            md.append(f"![honest gains]({_save(fig, out / 'study_deltas.png').name})\n")
        versus = head_to_head(cands)
        if not versus.empty and len(versus.columns) > 3:
            md += ["## IFT against the baselines, head to head\n",
                   f"{IFT_ALL} minus each baseline, both chosen on dev, paired by seed (points, mean ± 95% "
                   "interval); ▲ / ▼: IFT better / worse (the interval excludes 0). The last row: the mean of the "
                   "tasks' differences with a t-interval over tasks.\n", markdown_table(versus) + "\n"]
        ties = tie_sensitivity(cands)
        if not ties.empty:
            md += ["## Ties on dev: the earliest or the latest step\n",
                   "A few dev rows often score several steps (or settings) alike. The page gives such ties to the "
                   "cheapest choice, then the earliest step (ift/protocol.py `CHEAPEST`), so a flat dev curve "
                   "reports plain ICL; here the same honest Δ vs ICL with ties to the costliest choice, then the "
                   "latest step (`COSTLIEST`). ▲ / ▼: the paired 95% interval excludes 0; the mean over tasks has a "
                   "t-interval over tasks.\n", markdown_table(ties) + "\n"]
        spread = spread_table(cands)
        if not spread.empty:
            md += ["## Spread over seeds: how much the demonstrations matter\n",
                   f"Each seed draws other demonstrations and another sample of evaluation rows (the same rows for "
                   f"every method of the seed), so a method's accuracy spreads over seeds by how much it depends on "
                   f"the demonstrations it read, plus the rows' share, which zero-shot (no demonstrations) shows. Per "
                   f"task with at least {SPREAD_MIN_SEEDS} seeds: the standard deviations over seeds of ICL and "
                   f"zero-shot (points) and each method's as a ratio to ICL's, both chosen on dev, with a 95% paired "
                   f"bootstrap interval over seeds ({BOOTSTRAP_RESAMPLES} resamples); ▼ / ▲: the interval lies below / above 1 (less / more dependent than ICL). One "
                   f"interval per cell, none corrected for how many cells the table has.\n",
                   markdown_table(spread) + "\n"]
        md += ["## Per task: baselines and IFT\n", markdown_table(format_arms(main_arms(table))) + "\n"]
        settings = ift_settings(table)
        if not settings.empty:  # a page of baselines alone (zero-shot, repetition) has no IFT settings
            md += ["## IFT settings (position mode, β, η)\n", markdown_table(format_arms(settings)) + "\n"]
        short = max_step or 8
        longer = longer_tuning(every_step, short=short)
        if not longer.empty:
            md += [f"## Tuning longer: T ≤ {short} against all steps\n",
                   f"For IFT settings run past {short} steps: the honest Δ vs ICL when the dev rows choose among steps "
                   f"≤ {short} and among all steps, and the paired difference (▲ / ▼: the interval excludes 0).\n",
                   markdown_table(longer) + "\n"]
        fig = curves_figure(cands)
        if fig is not None:
            md.append(f"![accuracy vs step]({_save(fig, out / 'study_curves.png').name})\n")
    costs = cost_table(good)
    if not costs.empty:
        hosts = sorted({str(r.meta.get("host")) for r in good})
        md += ["## Compute spent\n", f"Measured while the runs ran (hosts: {', '.join(hosts)}): a step is tuned once and "
               "scored on every evaluation and dev row, so scoring dominates; tuning tokens count what building the "
               "prefix ran forward (backward tokens apart).\n", markdown_table(costs) + "\n"]
    cos = cosine_frame(good)
    if not cos.empty:
        md += ["## Does the pseudo-gradient point where the true gradient does?\n",
               "Cosine similarity per layer between IFT's first pseudo-gradient G (step 2, from the ICL cache) and "
               "the descent direction −∇ of the demonstrations' leave-one-out answer loss at the same cache.\n",
               markdown_table(cosine_table(cos)) + "\n",
               f"![cosine]({_save(cosine_figure(cos), out / 'study_cosine.png').name})\n"]
    skipped = load.skipped(runs)
    md.append(f"## Runs skipped ({len(skipped)})\n")
    md.append(markdown_table(pd.DataFrame([{"run": r.id, "reason": r.skip} for r in skipped])) + "\n"
              if skipped else "none\n")
    path = out / "study.md"
    path.write_text("\n".join(md))
    return path


def main(argv=None) -> Path:
    return cli.main("python -m analysis.study", __doc__,
                    lambda runs, args: build(runs, Path(args.out), args.metric, args.title, args.max_step),
                    "study.md and its figures", argv, options=_options)


def _options(ap) -> None:
    ap.add_argument("--title", default="Study results")
    ap.add_argument("--max-step", type=int, default=None,
                    help="choose among steps ≤ this in every table but 'Tuning longer' (default: all steps)")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
