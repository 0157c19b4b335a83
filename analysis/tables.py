"""The paper's Tables 1-3 from used runs, as pandas DataFrames, and a small Markdown formatter.

Protocols (accuracies in %, the stored fractions x 100):
- ICL = the eval accuracy at step 1 (the plain ICL cache).
- "best on eval" (the paper's): the best eval accuracy over steps 1..T (step 1 included), earliest on ties.
- "dev-chosen": the step with the best dev accuracy (earliest on ties); its eval accuracy is reported.
Over a sweep of η (runs equal in everything but η and seed), each protocol also picks η per
(configuration, seed): by best eval accuracy, or by the dev accuracy at the dev-chosen step (ties: the
earlier step, then the smaller η).
Over seeds: the mean and the half-width of its 95% Student-t interval (analysis/core.py, the convention of
every page; none with one seed). The relative gain is computed from the means: (tuned - ICL) / ICL x 100.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import core
from analysis.core import fmt_acc, fmt_gain, fmt_list
from analysis.load import KEYS, Run
from ift.protocol import EARLIEST, pick

# configuration keys besides model and task; those that vary across the runs become table columns
CONFIG_KEYS = ("beta", "position_mode", "n_shot", "T")
CLASSIFICATION = {"sst2", "sst5", "mr", "agnews", "ag_news", "trec", "subj", "cr", "rte", "cb"}
MULTIPLE_CHOICE = {"copa", "hellaswag", "openbookqa", "obqa", "qasc", "winogrande", "piqa", "arc_easy",
                   "arc_challenge", "storycloze"}


def task_family(task: str, meta: dict | None = None) -> str:
    """Table 1 holds classification tasks, Table 2 multiple choice.

    Decided by meta `task_type` if present, else by the built-in task spec (classification = it has
    label_words), else by the task's name; anything else goes to an "other" table.
    """
    kind = (meta or {}).get("task_type")
    if kind in ("classification", "multiple_choice"):
        return kind
    name = str(task).lower()
    try:
        from ift.tasks.registry import builtin_spec

        return "classification" if builtin_spec(name).get("label_words") else "multiple_choice"
    except Exception:  # noqa: BLE001 - not a built-in task (or no task registry): fall back to the name
        pass
    if name in CLASSIFICATION:
        return "classification"
    if name in MULTIPLE_CHOICE:
        return "multiple_choice"
    return "other"


def _columns(metric: str) -> tuple[str, str]:
    if metric not in ("acc", "acc_norm"):
        raise ValueError(f"metric must be 'acc' or 'acc_norm', got {metric!r}")
    return metric, "dev_" + metric


def steps_frame(runs: list[Run], metric: str = "acc") -> pd.DataFrame:
    """One row per (run, step): the run's keys, `acc` / `dev_acc` in % for the chosen metric."""
    eval_col, dev_col = _columns(metric)
    rows = []
    for run in runs:
        base = {"run": run.id, **{k: run.meta.get(k) for k in KEYS}}
        for s in run.steps:
            acc, dev = s.get(eval_col), s.get(dev_col)
            rows.append({**base, "step": int(s["step"]), "acc": np.nan if acc is None else 100 * acc,
                         "dev_acc": np.nan if dev is None else 100 * dev})
    cols = ["run", *KEYS, "step", "acc", "dev_acc"]
    return pd.DataFrame(rows, columns=cols)


def run_results(runs: list[Run], metric: str = "acc") -> pd.DataFrame:
    """One row per run: ICL accuracy, best-on-eval accuracy and step, dev-chosen step and its accuracies."""
    steps = steps_frame(runs, metric)
    rows = []
    for run in runs:
        s = steps[steps["run"] == run.id].sort_values("step").reset_index(drop=True)
        if s.empty or s["acc"].isna().all():
            continue  # e.g. --metric acc_norm on runs that did not record it
        first = s[s["step"] == s["step"].min()].iloc[0]
        records = s.to_dict("records")
        best = pick(records, "acc", EARLIEST)  # ift/protocol.py: ties go to the earliest step
        dev = pick(records, "dev_acc", EARLIEST)
        if dev is not None:
            dev_step, dev_acc, dev_eval = int(dev["step"]), dev["dev_acc"], dev["acc"]
        else:
            dev_step, dev_acc, dev_eval = np.nan, np.nan, np.nan
        rows.append({"run": run.id, **{k: run.meta.get(k) for k in KEYS},
                     "family": task_family(run.meta.get("task"), run.meta),
                     "icl": first["acc"], "best_acc": best["acc"], "best_step": int(best["step"]),
                     "dev_step": dev_step, "dev_acc": dev_acc, "dev_step_acc": dev_eval})
    return pd.DataFrame(rows, columns=["run", *KEYS, "family", "icl", "best_acc", "best_step", "dev_step",
                                       "dev_acc", "dev_step_acc"])


def varying(frame: pd.DataFrame, keys=CONFIG_KEYS) -> list[str]:
    """The configuration keys that take more than one value (they must appear as columns to tell rows apart)."""
    return [k for k in keys if k in frame and frame[k].astype(str).nunique() > 1]


def choose(per_run: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """One row per (configuration, seed): the η (run) and step each protocol picks, with `acc` and `step`
    (analysis.core.choose on the per-run best: best on eval, or the dev-chosen step's dev accuracy)."""
    score, step, acc = {"eval": ("best_acc", "best_step", "best_acc"),
                        "dev": ("dev_acc", "dev_step", "dev_step_acc")}.get(protocol, ("acc", "step", "acc"))
    # best score first; ties: the earlier step, then the smaller eta (ift/protocol.py)
    picked = core.choose(per_run, protocol, ["model", "task", *CONFIG_KEYS, "seed"], tie=(step, "eta"),
                         score=score, dropna=False)
    if picked.empty:
        return picked.assign(acc=[], step=[])
    return picked.assign(acc=picked[acc], step=picked[step].astype(int))


def _ci(x: pd.Series) -> float:
    return core.half_width(x.to_numpy())


def gain(tuned: float, icl: float) -> float:
    return (tuned - icl) / icl * 100 if icl else float("nan")


def main_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Tables 1-2: per model, task (and varying configuration), mean and 95% interval over seeds, both protocols."""
    group = ["model", "task", *CONFIG_KEYS]
    # ICL per seed: step 1 does not depend on eta, so the runs of one seed agree; average in case they don't
    icl = per_run.groupby(group + ["seed"], dropna=False, sort=True)["icl"].mean().reset_index()
    picks = {p: dict(list(choose(per_run, p).groupby(group, dropna=False, sort=False))) for p in ("eval", "dev")}
    etas = per_run.groupby(group, dropna=False)["eta"].nunique()
    rows = []
    for cfg, seeds in icl.groupby(group, dropna=False, sort=True):
        row = dict(zip(group, cfg))
        row["family"] = per_run[(per_run["model"] == row["model"]) & (per_run["task"] == row["task"])]["family"].iloc[0]
        row["seeds"] = len(seeds)
        row["eta_sweep"] = bool(etas.loc[cfg] > 1)
        row["icl_mean"], row["icl_ci"] = float(seeds["icl"].mean()), _ci(seeds["icl"])
        for p in picks:
            mine = picks[p].get(cfg)
            if mine is None or mine.empty:
                row.update({f"{p}_mean": np.nan, f"{p}_ci": np.nan, f"{p}_gain": np.nan, f"{p}_steps": [],
                            f"{p}_etas": [], f"{p}_seeds": 0})
                continue
            mine = mine.sort_values("seed")
            row[f"{p}_mean"], row[f"{p}_ci"] = float(mine["acc"].mean()), _ci(mine["acc"])
            # the gain compares like with like: the ICL mean over the same seeds
            icl_p = float(seeds[seeds["seed"].isin(mine["seed"])]["icl"].mean())
            row[f"{p}_gain"] = gain(row[f"{p}_mean"], icl_p)
            row[f"{p}_steps"] = [int(x) for x in mine["step"]]
            row[f"{p}_etas"] = [float(x) for x in mine["eta"]]
            row[f"{p}_seeds"] = len(mine)
        rows.append(row)
    return pd.DataFrame(rows)


def momentum_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Table 3: momentum (β > 0) against β = 0 on otherwise equal runs (paired by seed), best-on-eval."""
    group = ["model", "task", "eta", "position_mode", "n_shot", "T"]
    rows = []
    for cfg, g in per_run.groupby(group, dropna=False, sort=True):
        plain = g[g["beta"] == 0]
        for beta in sorted(b for b in g["beta"].unique() if b != 0):
            mom = g[g["beta"] == beta]
            seeds = sorted(set(mom["seed"]) & set(plain["seed"]))
            if not seeds:
                continue
            m = mom[mom["seed"].isin(seeds)].sort_values("seed")
            p = plain[plain["seed"].isin(seeds)].sort_values("seed")
            rows.append({**dict(zip(group, cfg)), "beta": float(beta), "seeds": len(seeds),
                         "m_mean": float(m["best_acc"].mean()), "m_ci": _ci(m["best_acc"]),
                         "m_steps": [int(x) for x in m["best_step"]],
                         "nm_mean": float(p["best_acc"].mean()), "nm_ci": _ci(p["best_acc"]),
                         "nm_steps": [int(x) for x in p["best_step"]]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- Markdown

def format_main(table: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """Display cells for Tables 1-2; `extra` are the varying configuration keys to show.

    Without an η sweep one η column says which η was run; with one, each protocol lists its η per seed.
    """
    sweep = bool(len(table)) and bool(table["eta_sweep"].any())
    out = []
    for r in table.to_dict("records"):
        row = {"model": r["model"], "task": r["task"], **{k: r[k] for k in extra}}
        if not sweep:
            row["η"] = fmt_list(sorted(set(r["eval_etas"] + r["dev_etas"])), "{:g}")
        row["seeds"] = r["seeds"]
        row["ICL"] = fmt_acc(r["icl_mean"], r["icl_ci"], r["seeds"])
        for p, name in (("eval", "best on eval"), ("dev", "dev-chosen")):
            row[f"tuned ({name})"] = fmt_acc(r[f"{p}_mean"], r[f"{p}_ci"], r[f"{p}_seeds"])
            row[f"gain ({name})"] = fmt_gain(r[f"{p}_gain"])
            row[f"step ({name})"] = fmt_list(r[f"{p}_steps"])
            if sweep:
                row[f"η ({name})"] = fmt_list(r[f"{p}_etas"], "{:g}")
        out.append(row)
    return pd.DataFrame(out)


def format_momentum(table: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """Display cells for Table 3: best accuracy and the step(s) where it peaks, with and without momentum."""
    out = []
    for r in table.to_dict("records"):
        out.append({"model": r["model"], "task": r["task"], "η": f"{r['eta']:g}", **{k: r[k] for k in extra},
                    "seeds": r["seeds"], "β": f"{r['beta']:g}",
                    "with momentum": fmt_acc(r["m_mean"], r["m_ci"], r["seeds"]),
                    "step": fmt_list(r["m_steps"]),
                    "w/o M (β=0)": fmt_acc(r["nm_mean"], r["nm_ci"], r["seeds"]),
                    "step (w/o M)": fmt_list(r["nm_steps"])})
    return pd.DataFrame(out)
