"""The protocol: which step of a run (or which run and step of an arm) is reported, and when tuning stops.

One module owns these rules, so the job's summary (ift.experiment.store.summarize), the reports
(analysis/tables.py) and the studies page (analysis/study.py) cannot disagree:

- a *protocol* names the score a choice maximises: `dev` (honest: the dev accuracy, then the chosen step's
  evaluation accuracy is reported) or `eval` (the paper's: the evaluation accuracy itself, optimistic);
- a *tie rule* is the keys that break equal scores, smallest first ("-key": largest first):
  `EARLIEST` within one run (a flat curve reports plain ICL), `CHEAPEST` among runs (fewer tuning tokens,
  then the earlier step, then the run id); `LATEST` / `COSTLIEST` are their mirror images (a sensitivity check);
- early stopping (`EarlyStopping`, `stop_step`): stop once the dev score has not improved on its best for
  `patience` steps (equal is no improvement); the best step so far is the one to use.

    stop = ift.EarlyStopping(patience=2)
    for prefix in tuner.steps(demo_text, T=15):
        dev_acc, _ = ift.accuracy(ift.score_examples(lm, dev, prefix=prefix))
        if stop.update(dev_acc):
            break
    # stop.best_step: the step to report (ties go to the earlier step)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ift.settings import check_patience

PROTOCOLS = {"dev": "dev_acc", "eval": "acc"}  # protocol -> the score (step-row field) it maximises
EARLIEST = ("step",)                           # ties within one run: the earliest step
CHEAPEST = ("tune_tokens", "step", "run")      # ties among runs: the cheaper choice, then the earlier step
# their mirror images, to measure how much a reported number owes to the tie rule (the studies page)
LATEST = ("-step",)                            # ties within one run: the latest step
COSTLIEST = ("-tune_tokens", "-step", "run")   # ties among runs: the costlier choice, then the later step


def score_of(protocol: str, metric: str = "acc") -> str:
    """The row field a protocol maximises for a metric: acc -> dev_acc (dev) or acc (eval)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return "dev_" + metric if protocol == "dev" else metric


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _order(tie: Sequence[str]) -> tuple[list[str], list[bool]]:
    """(keys, ascending) for a tie rule."""
    return [k.lstrip("-") for k in tie], [not k.startswith("-") for k in tie]


def pick(rows: Iterable[dict], score: str, tie: Sequence[str] = EARLIEST) -> dict | None:
    """The row with the highest `score` (rows without one are never picked), ties broken by `tie`; None if none."""
    ranked = [r for r in rows if not _missing(r.get(score))]
    for key, ascending in reversed(list(zip(*_order(tie)))):  # stable sorts, least significant key first
        ranked.sort(key=lambda r: r[key], reverse=not ascending)
    ranked.sort(key=lambda r: r[score], reverse=True)
    return ranked[0] if ranked else None


def pick_frame(frame, score: str, by: Sequence[str], tie: Sequence[str] = EARLIEST, dropna: bool = False):
    """`pick` for a pandas frame: the first row of each `by` group after ranking by `score` (highest first,
    missing last) and then `tie`. The caller drops rows whose score must not be chosen (the dev protocol);
    dropna drops the groups whose `by` keys are missing."""
    keys, ascending = _order(tie)
    ranked = frame.sort_values([score, *keys], ascending=[False, *ascending], kind="mergesort")
    return ranked.groupby(list(by), dropna=dropna, sort=False).head(1)


class EarlyStopping:
    """Feed one dev score per step, in step order; `update` says when to stop."""

    def __init__(self, patience: int):
        self.patience = check_patience(patience)
        self.step = 0          # steps seen
        self.best = -math.inf  # best score so far (a missing or NaN score never improves)
        self.best_step = 0

    def update(self, score: float | None) -> bool:
        """Record the next step's score; True once `patience` steps have passed without a strictly better one."""
        self.step += 1
        if score is not None and not math.isnan(score) and score > self.best:
            self.best, self.best_step = score, self.step
        return self.stopped

    @property
    def stopped(self) -> bool:
        return self.step - self.best_step >= self.patience


def stop_step(scores: Sequence[float | None], patience: int) -> int:
    """The last step (1-based) a run stopped early on these dev scores would have evaluated; all if none."""
    stop = EarlyStopping(patience)
    for score in scores:
        if stop.update(score):
            return stop.step
    return len(scores)
