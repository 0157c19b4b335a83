"""The analysis core every page shares (the study page, the report, the cross-model page): choosing a step
on dev (or on eval), the 95% Student-t interval over seeds (or over tasks), what a paired interval says against
ICL, how many seeds a target width needs, and how a page prints numbers and tables.

One convention for every page: the mean and the half-width of scipy's 95% t-interval,
mean ± t(0.975, n−1)·s/√n; differences are paired by seed. The choice rules themselves (scores, tie rules,
early stopping) are ift/protocol.py's.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ift.protocol import CHEAPEST, pick_frame, score_of


def choose(frame: pd.DataFrame, protocol: str, by, tie=CHEAPEST, score: str | None = None,
           dropna: bool = True) -> pd.DataFrame:
    """The row each `by` group picks under a protocol ('dev' or 'eval'): the highest `score` (default the
    protocol's: dev_acc or acc), ties by `tie` (ift/protocol.py). Under 'dev' a row without a dev score is
    never chosen; `dropna` drops the groups whose `by` keys are missing."""
    need = score_of(protocol)  # checks the protocol
    score = score or need
    if protocol == "dev":
        frame = frame.dropna(subset=[score])
    return pick_frame(frame, score, by, tie=tie, dropna=dropna)


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


BOOTSTRAP_RESAMPLES = 4000


def sd_ratio(base, other, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """How much `other` spreads over seeds relative to `base`, paired by seed: (sd(other) / sd(base), and a 95%
    percentile bootstrap interval over seeds). A fixed generator seed, so a page rebuilds byte for byte;
    resamples whose base has no spread are left out."""
    x, y = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if len(x) != len(y) or len(x) < 3 or x.std(ddof=1) == 0:
        return np.nan, np.nan, np.nan
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    sx, sy = x[idx].std(axis=1, ddof=1), y[idx].std(axis=1, ddof=1)
    ratios = sy[sx > 0] / sx[sx > 0]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(y.std(ddof=1) / x.std(ddof=1)), float(lo), float(hi)


def ratio_cell(ratio: float, lo: float, hi: float) -> str:
    """A spread ratio with its interval, ▼ / ▲ where the interval lies below / above 1."""
    if math.isnan(ratio):
        return "–"
    mark = " ▼" if hi < 1 else " ▲" if lo > 1 else ""
    return f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]{mark}"


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


def tokens(x: float) -> str:
    """A token count with thousands separators ('–' when unknown)."""
    return "–" if math.isnan(x) else f"{x:,.0f}"


def fmt_acc(mean: float, half: float, n: int) -> str:
    """'72.02 ± 3.23': the report's two-decimal mean ± 95% t half-width (the ± only with more than one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f} ± {half:.2f}" if n > 1 else f"{mean:.2f}"


def fmt_gain(g: float) -> str:
    """A relative gain in percent, signed, two decimals."""
    return "–" if g is None or math.isnan(g) else f"{g:+.2f}%"


def fmt_list(xs, fmt="{}") -> str:
    return ", ".join(fmt.format(x) for x in xs) if len(xs) else "–"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame of already formatted cells (no tabulate dependency)."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])
