"""Each arm at every fixed step beside the step its dev rows chose: where a dev-chosen gain comes from.

A method that offers many steps and lets 30 dev rows choose one per seed can gain from the choosing alone. So
the pages show, per task and one-setting arm, how many candidates dev chose among, the Δ vs ICL at each fixed
step (no choice at all), the best fixed step picked on the evaluation rows (optimistic: a bound on what any
fixed step can do) and the dev-chosen Δ; arms are selected by their fields (analysis.arms), never by name.
"""
from __future__ import annotations

import pandas as pd

from analysis.arms import RIVAL, STEP, SUBJECT, icl_rows
from analysis.core import interval, marked, signed
from analysis.study_tables import arm_table, span

KEY = ["model", "task", "n_shot", "seed"]


def _step_deltas(cands: pd.DataFrame):
    """Per task and one-setting arm with more than one step: (key, its rank, seeds, last step, {step: Δ vs ICL
    per seed} for the steps every seed reached), Δ paired by seed with ICL."""
    step_arms = cands[(cands["choice"] == STEP) & cands["role"].isin([SUBJECT, RIVAL])]
    if step_arms.empty:
        return
    icl = icl_rows(cands).set_index(KEY)["acc"]
    for key, g in step_arms.groupby(["model", "task", "n_shot", "arm"], sort=True):
        if g["step"].max() < 2:
            continue
        model, task, n_shot, _ = key
        seeds = sorted(g["seed"].unique())
        base = icl.reindex([(model, task, n_shot, s) for s in seeds]).to_numpy()
        per_step = g.pivot_table(index="seed", columns="step", values="acc", aggfunc="first").reindex(seeds)
        full = {int(s): per_step[s].to_numpy() - base for s in per_step.columns if per_step[s].notna().all()}
        yield key, int(g["rank"].iloc[0]), seeds, int(per_step.columns.max()), full


def fixed_step_table(cands: pd.DataFrame, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task and one-setting arm with more than one step: dev candidates, Δ vs ICL (paired by seed, mean ±
    95% interval, ▲ / ▼ where it excludes 0) at the dev-chosen step and at the best fixed step on eval (both
    `table`'s, analysis.study_tables.arm_table of the same candidates), at the last step, and each step's mean Δ."""
    rows, chosen = [], None
    for key, rank, seeds, last, full in _step_deltas(cands):
        if chosen is None:
            chosen = (arm_table(cands) if table is None else table).set_index(["model", "task", "n_shot", "arm"])
        r = chosen.loc[key]
        rows.append({
            "task": key[1], "method (choice)": key[3], "seeds": len(seeds),
            "dev candidates": span(r["dev_candidates"]),
            "Δ vs ICL, step chosen on dev": marked(r["dev_delta"], r["dev_delta_ci"]),
            "best fixed step on eval (bound)": (f"{r['task_eval_steps'][0]}: "
                                                f"{marked(r['task_eval_delta'], r['task_eval_delta_ci'])}"
                                                if r["task_eval_steps"] else "–"),
            "last step": (f"{last}: {marked(*interval(full[last].tolist())[:2])}"
                          if last in full else f"{last}: some seeds stop earlier"),
            "mean Δ at fixed step 2, 3, …": ", ".join(signed(interval(d.tolist())[0], float("nan"))
                                                      for s, d in full.items() if s >= 2),
            "rank": rank})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    return frame.sort_values(["task", "rank", "method (choice)"], kind="mergesort").drop(columns="rank")


def fixed_step_intervals(cands: pd.DataFrame) -> pd.DataFrame:
    """The fixed-step means of `fixed_step_table` with their intervals: per task and one-setting arm, the Δ vs ICL
    at each step every seed reached (paired by seed, mean ± 95% interval, ▲ / ▼ where it excludes 0; one
    interval per cell, none corrected for how many cells the table has)."""
    rows = []
    for key, rank, seeds, _, full in _step_deltas(cands):
        row = {"task": key[1], "method (choice)": key[3], "seeds": len(seeds)}
        row.update({f"step {s}": marked(*interval(d.tolist())[:2]) for s, d in full.items() if s >= 2})
        rows.append({**row, "rank": rank})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).fillna("")
    steps = sorted((c for c in frame.columns if c.startswith("step ")), key=lambda c: int(c.split()[1]))
    frame = frame[["task", "method (choice)", "seeds", *steps, "rank"]]
    return frame.sort_values(["task", "rank", "method (choice)"], kind="mergesort").drop(columns="rank")
