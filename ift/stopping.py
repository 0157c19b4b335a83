"""Early stopping on a dev score, so that a user need not pick T: tuning stops once the dev score has not
improved on its best for `patience` steps. The best step seen so far is then the one to use.

    stop = ift.EarlyStopping(patience=2)
    for prefix in tuner.steps(demo_text, T=15):
        dev_acc, _ = ift.accuracy(ift.score_examples(lm, dev, prefix=prefix))
        if stop.update(dev_acc):
            break
    # stop.best_step: the step to report (ties go to the earlier step)
"""
from __future__ import annotations

import math


class EarlyStopping:
    """Feed one dev score per step, in step order; `update` says when to stop."""

    def __init__(self, patience: int):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.patience = patience
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
