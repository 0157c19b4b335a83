"""Controls that ask where IFT's gain comes from: its update size without its direction, and two
cheap baselines that also select on dev or correct label bias.

- `RandomDirectionTuner`: IFT's steps run alongside, and at every step t >= 2 the cache moves by as much as IFT's
  does (‖η·M‖ per layer and step, keys and values apart) but in a seeded Gaussian direction. If the gain
  were only "some perturbation, its size tuned, the step chosen on dev", this control gets it too. A fresh
  direction each step is a random walk, which ends nearer ICL than IFT's nearly straight path (2-3.5x at
  T = 15: bench/bench_displacement.py); `direction="fixed"` keeps IFT's distance from ICL at every step instead.
- `demonstration_draws`: K different demonstration draws of one job (draw 1 is the job's own), for "ICL with
  the draw chosen on dev" (`Task.demonstrations(n, seed, draw=k)` keeps dev and evaluation rows out).
- `CalibratedScores` / `calibrate`: contextual calibration (Zhao et al. 2021, "Calibrate before use"): the label
  probabilities of content-free inputs ("N/A", "", "[MASK]") read after the demonstrations estimate the
  prefix's label bias, and every query's label probabilities are divided by them.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ift.example import Example
from ift.prefix import TunedPrefix
from ift.scorer import ExampleScore, score_examples
from ift.settings import PAPER
from ift.tuner import ForwardTuner

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021's content-free inputs


# --- random direction -----------------------------------------------------------------------------------

def random_like(reference: torch.Tensor, norm: float, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian tensor shaped like `reference`, scaled to Frobenius norm `norm` (zero for norm 0)."""
    noise = torch.randn(reference.shape, generator=generator, dtype=torch.float32)
    return (noise * (norm / torch.linalg.vector_norm(noise).item())).to(reference.device)


DIRECTIONS = ("fresh", "fixed")


class RandomDirectionTuner:
    """IFT's per-layer update sizes, or its distance from ICL, in a seeded random direction.

    Step 1 is ICL (IFT's step 1). At step t >= 2 IFT takes its own step (on its own trajectory), and per layer,
    for keys and values apart:

    - `direction="fresh"`: IFT's update Δₜ = K̃ₜ − K̃ₜ₋₁ = η·Mₜ fixes the size: this cache moves by a Gaussian
      tensor scaled to ‖Δₜ‖, a new one each step (a random walk of IFT's step sizes);
    - `direction="fixed"`: one Gaussian unit direction u, drawn at step 2, and this cache is K̃₁ + ‖K̃ₜ − K̃₁‖·u:
      as far from ICL as IFT's at every step, along one random line.

    The same `seed` gives the same directions. The yielded prefix carries the size of this cache's own move at
    the step in `grad_norms_k/v` (what the step row records; "fresh": IFT's ‖Δₜ‖) and stops where IFT diverges.
    """

    def __init__(self, lm, eta: float = PAPER.eta, beta: float = PAPER.beta, position_mode: str = PAPER.position_mode,
                 seed: int = 0, direction: str = "fresh"):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        self.ift = ForwardTuner(lm, eta=eta, beta=beta, position_mode=position_mode)
        self.seed, self.direction = seed, direction

    def steps(self, demo_text: str, T: int) -> Iterator[TunedPrefix]:
        generator = torch.Generator().manual_seed(self.seed)
        ours = previous = None
        lines: dict[str, list[torch.Tensor]] = {}  # direction="fixed": each layer's unit direction, keys and values
        for tuned in self.ift.steps(demo_text, T):
            if tuned.diverged:  # IFT's size is undefined past its divergence: stop as it does
                yield TunedPrefix(ours.keys, ours.values, ours.step, ours.token_ids, ours.grad_norms_k,
                                  ours.grad_norms_v, ours.meta, diverged=f"IFT diverged: {tuned.diverged}")
                return
            if previous is None:
                first = ours = TunedPrefix(tuned.keys, tuned.values, 1, tuned.token_ids, tuned.grad_norms_k,
                                           tuned.grad_norms_v, {**tuned.meta, "method": "random_direction"})
                if self.direction == "fixed":
                    ours.meta["direction"] = "fixed"
            else:
                moved, norms = {}, {}
                for name in ("keys", "values"):
                    new, old, mine = getattr(tuned, name), getattr(previous, name), getattr(ours, name)
                    if self.direction == "fresh":
                        sizes = [torch.linalg.vector_norm(n - o).item() for n, o in zip(new, old)]
                        moved[name] = [m + random_like(m, s, generator) for m, s in zip(mine, sizes)]
                    else:
                        moved[name] = along_line(lines, name, new, getattr(first, name), generator)
                        sizes = [torch.linalg.vector_norm(n - m).item() for n, m in zip(moved[name], mine)]
                    norms[name] = sizes
                ours = TunedPrefix(moved["keys"], moved["values"], tuned.step, tuned.token_ids, norms["keys"],
                                   norms["values"], ours.meta)
            previous = tuned
            yield ours


def along_line(lines: dict, name: str, ifts: list, icl: list, generator: torch.Generator) -> list:
    """ICL's layers moved along fixed unit directions (`lines[name]`, drawn on first use) as far as IFT's are."""
    if name not in lines:
        lines[name] = [random_like(x, 1.0, generator) for x in icl]
    return [x + torch.linalg.vector_norm(n - x).item() * u for n, x, u in zip(ifts, icl, lines[name])]


# --- demonstrations chosen on dev --------------------------------------------------------------------------

def demonstration_draws(task, n_shot: int, seed: int, k: int) -> list:
    """The job's demonstrations (draw 0) and k − 1 other draws of as many from the same candidate rows (never a
    dev or evaluated row: ift.tasks.task.Task.demonstrations)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (number of draws) must be an integer >= 1, got {k!r}")
    return [task.demonstrations(n_shot, seed, draw=d) for d in range(k)]


# --- contextual calibration ----------------------------------------------------------------------------

def content_free_examples(task, strings: Sequence[str] = CONTENT_FREE) -> list[Example]:
    """The task's query template with every placeholder filled by a content-free string, one example each.

    Only classification with fixed label words has one label set to calibrate (multiple choice changes its
    candidates per row): anything else raises ValueError."""
    spec = task.spec
    if not spec.is_classification or spec.formatter != "template":
        raise ValueError(f"contextual calibration needs a classification task with fixed label_words and the template "
                         f"formatter; {task.name} is {'multiple choice' if not spec.is_classification else ''}"
                         f"{' with formatter ' + spec.formatter if spec.formatter != 'template' else ''}")
    out = []
    for text in strings:
        row: dict = {}
        for path in spec.placeholders:
            node = row
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = text
        out.append(task.render_example(row))
    return out


def _label_probs(logprobs: Sequence[float]) -> torch.Tensor:
    """Probabilities over the label words, renormalised among them (log-sum-exp, no underflow)."""
    return torch.softmax(torch.tensor(logprobs, dtype=torch.float64), dim=0)


class CalibratedScores:
    """The content-free label distribution p_cf of a prefix and the correction q ∝ p / p_cf it implies
    (Zhao et al.'s W = diag(p_cf)⁻¹, b = 0), for the summed (acc) and the per-token mean (acc_norm) scores."""

    def __init__(self, content_free: Sequence[ExampleScore]):
        if not content_free:
            raise ValueError("contextual calibration needs at least one content-free score")
        self.p_cf = torch.stack([_label_probs(s.sum_logprobs) for s in content_free]).mean(0)
        self.p_cf_norm = torch.stack([_label_probs(s.mean_logprobs) for s in content_free]).mean(0)

    def __call__(self, scores: Sequence[ExampleScore]) -> list[ExampleScore]:
        """Each score's candidates as calibrated log-probabilities log(p / p_cf) − log Σ (what accuracy() reads)."""
        return [ExampleScore(_corrected(s.sum_logprobs, self.p_cf), _corrected(s.mean_logprobs, self.p_cf_norm),
                             s.n_tokens, s.gold) for s in scores]


def _corrected(logprobs: Sequence[float], p_cf: torch.Tensor) -> list[float]:
    if len(logprobs) != len(p_cf):
        raise ValueError(f"{len(logprobs)} candidates but the calibration has {len(p_cf)} label words")
    q = _label_probs(logprobs) / p_cf
    return [math.log(x) for x in (q / q.sum()).tolist()]


def calibrate(lm, task, prefix: TunedPrefix | None, batch_size: int = 8) -> CalibratedScores:
    """Fit contextual calibration for `prefix` (the demonstrations' ICL cache) on the content-free inputs."""
    free = content_free_examples(task)
    return CalibratedScores(score_examples(lm, free, prefix=prefix, batch_size=batch_size))
