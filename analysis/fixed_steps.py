"""Each arm at every fixed step beside the step its dev rows chose: where a dev-chosen gain comes from.

A method that offers many steps and lets 30 dev rows choose one per seed can gain from the choosing alone. So
the pages show, per task and one-setting arm, how many candidates dev chose among, the Δ vs ICL at each fixed
step (no choice at all), the best fixed step picked on the evaluation rows (optimistic: a bound on what any
fixed step can do) and the dev-chosen Δ; arms are selected by their fields (analysis.arms), never by name.
"""
from __future__ import annotations

import pandas as pd

from analysis.arms import RIVAL, STEP, SUBJECT, choose, choose_per_task, icl_rows
from analysis.core import interval, marked, signed
from analysis.study_tables import span

KEY = ["model", "task", "n_shot", "seed"]


def fixed_step_table(cands: pd.DataFrame) -> pd.DataFrame:
    """Per task and one-setting arm with more than one step: dev candidates, Δ vs ICL (paired by seed, mean ±
    95% interval, ▲ / ▼ where it excludes 0) at the dev-chosen step, at the best fixed step on eval, at the last
    step, and each step's mean Δ."""
    step_arms = cands[(cands["choice"] == STEP) & cands["role"].isin([SUBJECT, RIVAL])]
    if step_arms.empty:
        return pd.DataFrame()
    icl = icl_rows(cands).set_index(KEY)["acc"]
    dev = choose(step_arms, "dev").set_index(["arm", *KEY])["acc"]
    best = choose_per_task(step_arms, "eval")
    rows = []
    for (model, task, n_shot, arm), g in step_arms.groupby(["model", "task", "n_shot", "arm"], sort=True):
        seeds = sorted(g["seed"].unique())
        if g["step"].max() < 2:
            continue
        base = icl.reindex([(model, task, n_shot, s) for s in seeds]).to_numpy()

        def delta(acc) -> tuple[float, float, int]:
            return interval((acc - base).tolist())

        per_step = g.pivot_table(index="seed", columns="step", values="acc", aggfunc="first").reindex(seeds)
        last = int(per_step.columns.max())
        full = [s for s in per_step.columns if per_step[s].notna().all()]  # steps every seed reached
        chosen = dev.reindex([(arm, model, task, n_shot, s) for s in seeds]).to_numpy()
        b = best[(best["task"] == task) & (best["model"] == model) & (best["n_shot"] == n_shot)
                 & (best["arm"] == arm)].set_index("seed").reindex(seeds)
        spec = g["arm_spec"].iloc[0]
        rows.append({
            "task": task, "method (choice)": arm, "seeds": len(seeds),
            "dev candidates": span(g.dropna(subset=["dev_acc"]).groupby("seed")["step"].nunique().tolist()),
            "Δ vs ICL, step chosen on dev": marked(*delta(chosen)[:2]),
            "best fixed step on eval (bound)": (f"{int(b['step'].iloc[0])}: {marked(*delta(b['acc'].to_numpy())[:2])}"
                                                if b["step"].notna().all() else "–"),
            "last step": (f"{last}: {marked(*delta(per_step[last].to_numpy())[:2])}"
                          if last in full else f"{last}: some seeds stop earlier"),
            "mean Δ at fixed step 2, 3, …": ", ".join(f"{signed(delta(per_step[s].to_numpy())[0], float('nan'))}"
                                                      for s in full if s >= 2),
            "rank": spec.rank})
    frame = pd.DataFrame(rows)
    return frame.sort_values(["task", "rank", "method (choice)"], kind="mergesort").drop(columns="rank")
