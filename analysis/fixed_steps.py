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


def fixed_step_table(cands: pd.DataFrame, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task and one-setting arm with more than one step: dev candidates, Δ vs ICL (paired by seed, mean ±
    95% interval, ▲ / ▼ where it excludes 0) at the dev-chosen step and at the best fixed step on eval (both
    `table`'s, analysis.study_tables.arm_table of the same candidates), at the last step, and each step's mean Δ."""
    step_arms = cands[(cands["choice"] == STEP) & cands["role"].isin([SUBJECT, RIVAL])]
    if step_arms.empty:
        return pd.DataFrame()
    chosen = (arm_table(cands) if table is None else table).set_index(["model", "task", "n_shot", "arm"])
    icl = icl_rows(cands).set_index(KEY)["acc"]
    rows = []
    for key, g in step_arms.groupby(["model", "task", "n_shot", "arm"], sort=True):
        if g["step"].max() < 2:
            continue
        (model, task, n_shot, arm), r = key, chosen.loc[key]
        seeds = sorted(g["seed"].unique())
        base = icl.reindex([(model, task, n_shot, s) for s in seeds]).to_numpy()

        def delta(acc) -> tuple[float, float, int]:
            return interval((acc - base).tolist())

        per_step = g.pivot_table(index="seed", columns="step", values="acc", aggfunc="first").reindex(seeds)
        last = int(per_step.columns.max())
        full = [s for s in per_step.columns if per_step[s].notna().all()]  # steps every seed reached
        rows.append({
            "task": task, "method (choice)": arm, "seeds": len(seeds),
            "dev candidates": span(r["dev_candidates"]),
            "Δ vs ICL, step chosen on dev": marked(r["dev_delta"], r["dev_delta_ci"]),
            "best fixed step on eval (bound)": (f"{r['task_eval_steps'][0]}: "
                                                f"{marked(r['task_eval_delta'], r['task_eval_delta_ci'])}"
                                                if r["task_eval_steps"] else "–"),
            "last step": (f"{last}: {marked(*delta(per_step[last].to_numpy())[:2])}"
                          if last in full else f"{last}: some seeds stop earlier"),
            "mean Δ at fixed step 2, 3, …": ", ".join(f"{signed(delta(per_step[s].to_numpy())[0], float('nan'))}"
                                                      for s in full if s >= 2),
            "rank": r["rank"]})
    frame = pd.DataFrame(rows)
    return frame.sort_values(["task", "rank", "method (choice)"], kind="mergesort").drop(columns="rank")
