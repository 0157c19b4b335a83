"""The methods a study compares, each as a sequence of prefixes along its own knob ("step").

Every method reads the same demonstrations (drawn once per job from the task and seed) and is scored on
the same evaluation and dev rows, so the job layer treats them alike: score the prefix of every step,
let the dev set choose the step. Step 1 is plain ICL for every method but zero-shot.

    ift         step t: after t forward-tuning steps (the paper's method; K̃/Ṽ moved by η·M)
    zero_shot   one step, no demonstrations
    repeat      step r: the demonstrations read r times in a row (does re-reading alone explain IFT?)
    more_demos  step k: k·n_shot demonstrations (per class) instead of n_shot: ICL with a longer prefix
    grad        step s: after s−1 Adam steps on the K/V cache, by backpropagating the demonstrations'
                own leave-one-out answer log-likelihood (a true-gradient counterpart of IFT)

Compute is counted in forward tokens: `tune_tokens` is what building this step's prefix cost (cumulative
over steps for the iterative methods; backward passes counted apart as `backward_tokens`),
`prefix_tokens` is the cached prefix length every query attends to at inference.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import ift
from ift.baselines import icl_prefix, repeat_demonstrations
from ift.cache import uses_alibi
from ift.experiment.config import METHODS  # noqa: F401 - the names, checked by the config


@dataclass
class Point:
    """One step of a method: the prefix to score with (None: zero-shot) and what it cost."""

    step: int
    prefix: ift.TunedPrefix | None
    tune_tokens: int = 0
    backward_tokens: int = 0
    extra: dict = field(default_factory=dict)  # method-specific numbers for the step row (loss, norms ...)

    @property
    def prefix_tokens(self) -> int:
        return self.prefix.length if self.prefix is not None else 0


def ift_points(lm, demo_text: str, optim, resume_from=None) -> Iterator[Point]:
    tuner = ift.ForwardTuner(lm, eta=optim.eta, beta=optim.beta, position_mode=optim.position_mode)
    for prefix in tuner.steps(demo_text, optim.T, resume_from=resume_from):
        # step 1 reads the L demonstration tokens; every later step re-reads them (attending to 2L)
        yield Point(prefix.step, prefix, tune_tokens=prefix.step * prefix.length,
                    extra={"grad_norm_k": prefix.grad_norms_k, "grad_norm_v": prefix.grad_norms_v})


def zero_shot_points() -> Iterator[Point]:
    yield Point(1, None)


def repeat_points(lm, demo_text: str, max_repeats: int, done: set[int]) -> Iterator[Point]:
    for r in range(1, max_repeats + 1):
        if r in done:
            continue
        prefix = icl_prefix(lm, repeat_demonstrations(demo_text, r))
        yield Point(r, prefix, tune_tokens=prefix.length)


def more_demos_points(lm, task, n_shot: int, seed: int, max_factor: int, done: set[int]) -> Iterator[Point]:
    """k·n_shot demonstrations; the k·n draw of a seed contains the n draw (ift.tasks.sampling)."""
    for k in range(1, max_factor + 1):
        if k in done:
            continue
        demos = task.demonstrations(k * n_shot, seed)
        prefix = icl_prefix(lm, demos.text)
        yield Point(k, prefix, tune_tokens=prefix.length, extra={"n_demonstrations": len(demos.indices)})


def grad_points(lm, demo_examples, T: int, lr: float) -> Iterator[Point]:
    from ift.gradient import GradientTuner

    for prefix in GradientTuner(lm, lr=lr).steps(demo_examples, T):
        m = prefix.meta
        yield Point(prefix.step, prefix, tune_tokens=int(m["tune_tokens"]),
                    backward_tokens=int(m["tune_backward_tokens"]),
                    extra={"loo_loss": m["loss"], "grad_norm_k": prefix.grad_norms_k,
                           "grad_norm_v": prefix.grad_norms_v})


def pseudo_gradient_cosines(lm, demo_examples) -> dict:
    """{position mode: {"k": [cos per layer], "v": [...]}}: IFT's first pseudo-gradient against the true
    descent direction at the ICL cache (ift.gradient.pseudo_gradient_cosine); NaN (a zero vector) is None."""
    from ift.gradient import pseudo_gradient_cosine

    modes = ["continue"] if uses_alibi(lm.model) else ["continue", "aligned"]
    out = {}
    for mode in modes:
        cos = pseudo_gradient_cosine(lm, demo_examples, position_mode=mode)
        out[mode] = {w: [c if math.isfinite(c) else None for c in cos[w]] for w in ("k", "v")}
    return out
