"""The statistics of the analysis pages: a 95% Student-t interval over seeds (or over tasks), what a paired
interval says against ICL, how many seeds a target width needs, and the per-arm table of both protocols.

One convention for every page (analysis.study and analysis.report): the mean and the half-width of scipy's
95% t-interval, mean ± t(0.975, n−1)·s/√n; differences are paired by seed.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.arms import choose, icl_rows


def half_width(values) -> float:
    """The 95% t-interval's half-width of finite `values` (nan below two values)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 2:
        return np.nan
    return float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))


def interval(values) -> tuple[float, float, int]:
    """(mean, 95% t half-width, n) of the non-nan values; the half-width is nan with one value."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return np.nan, np.nan, 0
    if n == 1:
        return float(v[0]), np.nan, 1
    return float(v.mean()), half_width(v), n


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


# ---------------------------------------------------------------- cells

def pm(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def signed(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.1f}" if math.isnan(half) else f"{mean:+.1f} ± {half:.1f}"


def marked(mean: float, half: float) -> str:
    """A signed difference with ▲ / ▼ where its 95% interval excludes 0."""
    return signed(mean, half) + {"better": " ▲", "worse": " ▼"}.get(verdict(mean, half), "")


# ---------------------------------------------------------------- per arm

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
        spec = honest["arm_spec"].iloc[0]  # the Arm: code selects rows by its fields, never by the label
        row["method"], row["choice"], row["rank"] = spec.method, spec.choice, spec.rank
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
