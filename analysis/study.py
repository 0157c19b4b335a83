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

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from analysis import load  # noqa: E402
from analysis.tables import markdown_table, task_family  # noqa: E402
from ift.protocol import CHEAPEST, pick_frame, score_of, stop_step  # noqa: E402

ICL = "ICL"
ZERO = "zero-shot"
IFT_ALL = "IFT (mode, η, β, T on dev)"
ETA_ARM = " (T on dev)"  # the suffix of the per-η IFT arms, where each run's steps appear exactly once
PATIENCE = 2
IFT_EARLY = f"IFT (mode, η, β on dev; T by early stopping, patience {PATIENCE})"
BASELINE_ARMS = {"repeat": "ICL ×r (r on dev)", "more_demos": "ICL, k×n shots (k on dev)"}
COLUMNS = ["task", "arm", "seed", "run", "step", "acc", "dev_acc", "tune_tokens", "backward_tokens",
           "prefix_tokens"]


def method(run: load.Run) -> str:
    return str(run.meta.get("method") or "ift")


def ift_setting(meta: dict) -> str:
    return f"IFT {meta.get('position_mode')} β={float(meta.get('beta')):g}"


def arms_of(run: load.Run) -> list[str]:
    """The arms a run's steps belong to (an IFT run serves its η-specific, its setting's and the overall arm)."""
    m, meta = method(run), run.meta
    if meta.get("patience") is not None:  # stopped at run time (optim.patience): its own arm, beside full runs
        what = (f"{ift_setting(meta)} η={float(meta.get('eta')):g}" if m == "ift"
                else f"gradient tuning lr={float(meta.get('lr') or 0):g}")
        return [f"{what} (run-time early stopping, patience {meta['patience']})"]
    if m == "ift":
        setting = ift_setting(meta)
        return [f"{setting} η={float(meta.get('eta')):g}{ETA_ARM}", f"{setting} (η, T on dev)", IFT_ALL]
    if m == "zero_shot":
        return [ZERO]
    if m == "grad":
        return [f"gradient tuning lr={float(meta.get('lr') or 0):g} (steps on dev)"]
    return [BASELINE_ARMS.get(m, m)]


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


def candidates(runs: list[load.Run], metric: str = "acc") -> pd.DataFrame:
    """One row per (arm, run, step) with what a protocol needs to choose and to report."""
    rows = []
    for run in runs:
        meta = run.meta
        simulate = method(run) == "ift" and meta.get("patience") is None  # a full run: simulate early stopping
        stop = early_stop([_pct(s.get("dev_" + metric)) for s in run.steps]) if simulate else 0
        for s in run.steps:
            base = {"model": meta.get("model"), "task": meta.get("task"), "n_shot": meta.get("n_shot"),
                    "seed": meta.get("seed"), "run": run.id, "method": method(run), "step": int(s["step"]),
                    "acc": _pct(s.get(metric)), "dev_acc": _pct(s.get("dev_" + metric)),
                    "tune_tokens": float(s.get("tune_tokens", np.nan) or 0),
                    "backward_tokens": float(s.get("backward_tokens", 0) or 0),
                    "prefix_tokens": float(s.get("prefix_tokens", np.nan) if s.get("prefix_tokens") is not None
                                           else np.nan),
                    "family": task_family(meta.get("task"), meta)}
            for arm in arms_of(run):
                rows.append({**base, "arm": arm})
            if base["step"] <= stop:  # what early stopping would have evaluated
                rows.append({**base, "arm": IFT_EARLY})
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
    return first.sort_values("run").groupby(group, as_index=False).head(1).assign(arm=ICL)


def choose(cands: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The (run, step) each arm picks per seed under a protocol ('dev' or 'eval')."""
    score = score_of(protocol)  # candidates hold the chosen metric as acc / dev_acc
    c = cands.dropna(subset=[score]) if protocol == "dev" else cands
    return pick_frame(c, score, ["model", "task", "n_shot", "arm", "seed"], tie=CHEAPEST, dropna=True)


def interval(values) -> tuple[float, float, int]:
    """(mean, 95% t half-width, n); the half-width is nan with one value."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return np.nan, np.nan, 0
    if n == 1:
        return float(v[0]), np.nan, 1
    half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def arm_table(cands: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, n_shot, arm): both protocols' accuracy and paired difference to ICL, and compute."""
    icl = icl_rows(cands)
    icl_by = icl.set_index(["model", "task", "n_shot", "seed"])["acc"]
    picks = {p: pd.concat([choose(cands, p), icl]) for p in ("dev", "eval")}
    rows = []
    group = ["model", "task", "n_shot", "arm"]
    for key, honest in picks["dev"].groupby(group, sort=False):
        row = dict(zip(group, key))
        row["family"] = honest["family"].iloc[0]
        for p in ("dev", "eval"):
            mine = picks[p]
            mine = mine[(mine["model"] == key[0]) & (mine["task"] == key[1]) & (mine["n_shot"] == key[2])
                        & (mine["arm"] == key[3])].sort_values("seed")
            idx = list(zip(mine["model"], mine["task"], mine["n_shot"], mine["seed"]))
            base = icl_by.reindex(idx).to_numpy()
            row[f"{p}_mean"], row[f"{p}_ci"], row["seeds"] = interval(mine["acc"].tolist())
            row[f"{p}_delta"], row[f"{p}_delta_ci"], _ = interval((mine["acc"].to_numpy() - base).tolist())
            row[f"{p}_steps"] = [int(s) for s in mine["step"]]
            row[f"{p}_tune_tokens"] = float(mine["tune_tokens"].mean())
            row[f"{p}_backward_tokens"] = float(mine["backward_tokens"].mean())
            row[f"{p}_prefix_tokens"] = float(mine["prefix_tokens"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(delta: float, half: float) -> str:
    """What the paired interval says about an arm against ICL."""
    if math.isnan(delta):
        return "–"
    if math.isnan(half):
        return "one seed"
    if delta - half > 0:
        return "better"
    if delta + half < 0:
        return "worse"
    return "no difference"


def _pm(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def _signed(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.1f}" if math.isnan(half) else f"{mean:+.1f} ± {half:.1f}"


def _marked(mean: float, half: float) -> str:
    """A signed difference with ▲ / ▼ where its 95% interval excludes 0."""
    return _signed(mean, half) + {"better": " ▲", "worse": " ▼"}.get(verdict(mean, half), "")


def _tokens(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.0f}"


ARM_ORDER = (ZERO, ICL, BASELINE_ARMS["repeat"], BASELINE_ARMS["more_demos"])


def _order(arm: str) -> tuple:
    if arm in ARM_ORDER:
        return (ARM_ORDER.index(arm), arm)
    if arm.startswith("gradient"):
        return (len(ARM_ORDER), arm)
    if arm in (IFT_ALL, IFT_EARLY):
        return (len(ARM_ORDER) + 1, arm)
    return (len(ARM_ORDER) + 2, arm)


def format_arms(table: pd.DataFrame, arms=None) -> pd.DataFrame:
    """Display cells: honest accuracy and Δ vs ICL with intervals, the verdict, the paper protocol, compute."""
    out = []
    t = table if arms is None else table[table["arm"].isin(arms)]
    t = t.assign(_o=t["arm"].map(_order)).sort_values(["task", "_o"])
    for r in t.to_dict("records"):
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
    for arm, g in table[table["arm"] != ICL].groupby("arm"):
        v = [verdict(d, h) for d, h in zip(g["dev_delta"], g["dev_delta_ci"])]
        rows.append({"method (choice)": arm, "tasks": len(g),
                     "mean honest Δ (± over tasks)": _signed(*interval(g["dev_delta"].tolist())[:2]),
                     "better": v.count("better"), "no difference": v.count("no difference"),
                     "worse": v.count("worse"), "mean paper Δ": _signed(*interval(g["eval_delta"].tolist())[:2]),
                     "_o": _order(arm)})
    return pd.DataFrame(rows).sort_values("_o").drop(columns="_o") if rows else pd.DataFrame()


def seeds_for(half: float, n: int, target: float = 3.0) -> int | None:
    """How many seeds a 95% t-interval would need to be ± `target` points, if the seed-to-seed spread stays
    what `n` seeds with half-width `half` showed (None: not estimable from fewer than 2 seeds)."""
    if n < 2 or math.isnan(half):
        return None
    sd = half * math.sqrt(n) / stats.t.ppf(0.975, n - 1)
    m = 2
    while stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m) > target:
        m += 1
    return m


MATRIX_ARMS = (ZERO, BASELINE_ARMS["repeat"], BASELINE_ARMS["more_demos"], IFT_EARLY, IFT_ALL)


def task_matrix(table: pd.DataFrame, target: float = 3.0) -> pd.DataFrame:
    """One row per task: ICL accuracy, each main arm's honest Δ vs ICL (▲ better, ▼ worse: the paired 95%
    interval excludes 0), IFT's Δ under the paper's protocol, and the seeds IFT's Δ would need for ± target."""
    arms = [a for a in MATRIX_ARMS if a in set(table["arm"])]
    arms += sorted((a for a in table["arm"].unique() if a.startswith("gradient")), key=_order)
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
            need = seeds_for(r["dev_delta_ci"], int(r["seeds"]), target)
            row[f"seeds for ±{target:g} on IFT Δ"] = "–" if need is None else str(need)
        rows.append(row)
    return pd.DataFrame(rows)


def _rivals(arms) -> list[str]:
    """The baselines IFT must beat to be worth its cost: zero-shot, re-reading, more demonstrations, the gradient."""
    return ([a for a in (ZERO, BASELINE_ARMS["repeat"], BASELINE_ARMS["more_demos"]) if a in arms]
            + sorted(a for a in arms if a.startswith("gradient")))


def head_to_head(cands: pd.DataFrame, arm: str = IFT_ALL) -> pd.DataFrame:
    """Per task: `arm`'s honest accuracy minus each baseline's, paired by seed (both chosen on dev, on the same
    seed's demonstrations and rows), ▲ / ▼ where the 95% interval excludes 0; then a row with the mean over
    tasks and its interval over tasks. Beating ICL is not enough when a cheaper baseline beats ICL by more."""
    picks = choose(cands, "dev")
    rivals = _rivals(set(picks["arm"]))
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


def _eta_arms(cands: pd.DataFrame) -> pd.DataFrame:
    return cands[(cands["method"] == "ift") & cands["arm"].str.endswith(ETA_ARM)]


def longer_tuning(cands: pd.DataFrame, short: int = 8) -> pd.DataFrame:
    """Does tuning past `short` steps pay? Per task and IFT setting whose runs go beyond `short` steps: the honest
    Δ vs ICL when dev chooses among steps ≤ short and among all steps, and their paired difference."""
    ift = _eta_arms(cands)
    icl = icl_rows(cands).set_index(["task", "n_shot", "seed"])["acc"]
    rows = []
    for (task, n_shot, arm), g in ift.groupby(["task", "n_shot", "arm"], sort=True):
        longest = int(g["step"].max())
        if longest <= short:
            continue
        picks = {limit: choose(g[g["step"] <= limit], "dev").set_index("seed") for limit in (short, longest)}
        seeds = sorted(picks[longest].index.intersection(picks[short].index))
        base = icl.reindex([(task, n_shot, s) for s in seeds]).to_numpy()
        row = {"task": task, "setting": arm.removesuffix(ETA_ARM), "seeds": len(seeds)}
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
    evaluation and dev rows), per step, and the tuning tokens of its last step."""
    rows = []
    for run in runs:
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
    ift = _eta_arms(cands)
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
            ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=2.5, linewidth=1.2, color=colour[arm],
                    label=arm.removeprefix("IFT ").removesuffix(ETA_ARM))
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
    keep = table[(table["arm"] != ICL) & ~table["arm"].str.contains(r"\(T on dev\)|\(η, T on dev\)")]
    if keep.empty:
        return None
    arms = sorted(keep["arm"].unique(), key=_order)
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
    rows = []
    for (mode, which), g in frame.groupby(["mode", "which"]):
        per_run = g.groupby(["task", "seed"])["cos"].mean()
        rows.append({"position mode": mode, "K/V": which.upper(), "mean cosine over layers": f"{per_run.mean():.3f}",
                     "min layer mean": f"{g.groupby('layer')['cos'].mean().min():.3f}",
                     "max layer mean": f"{g.groupby('layer')['cos'].mean().max():.3f}",
                     "runs": len(per_run)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the page

def build(runs: list[load.Run], out: Path, metric: str = "acc", title: str = "Study results") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good = drop_incomplete([r for r in load.used(runs) if r.mode == "tune"])
    cands = candidates(good, metric)
    md = [f"# {title}\n", f"Generated by `python -m analysis.study` from {len(good)} runs "
          f"({len(load.skipped(runs))} skipped, listed at the end). Metric `{metric}`, in %.\n",
          __doc__.split("\n\n", 2)[2].strip() + "\n"]
    if cands.empty:
        md.append("No usable runs.\n")
    else:
        table = arm_table(cands)
        md += ["## Overview: every method against ICL\n",
               "Honest Δ = dev-chosen accuracy − ICL, paired by seed. *better* / *worse*: on that task, the 95% "
               "interval of the paired difference excludes 0. The mean over tasks has a 95% t-interval over tasks "
               "(each task's mean Δ one value): it says whether the gain carries across tasks.\n", markdown_table(overview(table)) + "\n"]
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
        main_arms = [a for a in table["arm"].unique() if not a.startswith("IFT ") or a in (IFT_ALL, IFT_EARLY)]
        md += ["## Per task: baselines and IFT\n", markdown_table(format_arms(table, main_arms)) + "\n",
               "## IFT settings (position mode, β, η)\n",
               markdown_table(format_arms(table, [a for a in table["arm"].unique()
                                                   if a.startswith("IFT ") and a not in (IFT_ALL, IFT_EARLY)]))
               + "\n"]
        longer = longer_tuning(cands)
        if not longer.empty:
            md += ["## Tuning longer: T ≤ 8 against all steps\n",
                   "For IFT settings run past 8 steps: the honest Δ vs ICL when the dev rows choose among steps "
                   "≤ 8 and among all steps, and the paired difference (▲ / ▼: the interval excludes 0).\n",
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
    ap = argparse.ArgumentParser(prog="python -m analysis.study", description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+",
                    help="results directories (job dirs or trees), study archives (*.tar.gz), wandb:<entity>/<project>")
    ap.add_argument("--out", default="reports", help="output directory for study.md and its figures")
    ap.add_argument("--metric", default="acc", choices=["acc", "acc_norm"])
    ap.add_argument("--title", default="Study results")
    args = ap.parse_args(argv)
    runs = load.load(args.sources)
    if not runs:
        ap.error(f"no runs (meta.json) found in {', '.join(args.sources)}")
    path = build(runs, Path(args.out), args.metric, args.title)
    print(path)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
