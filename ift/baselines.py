"""Baselines beside IFT, on the same demonstrations, all scored with `ift.score_examples`.

- `icl_prefix(lm, demo_text)`: the plain ICL prefix (one forward pass; IFT's step 1). Scoring with it equals
  scoring with `demonstrations=demo_text`, but the demonstrations' K/V are computed once, not per query, so
  every ICL-type baseline (more shots, repeated demonstrations) is scored through it cheaply.
- `repeat_demonstrations(demo_text, r)`: the demonstrations read r times in one input (the "is it just
  repetition?" baseline: ICL over r copies against IFT with T steps).
- `prefix_tokens(lm, demo_text)`: the prefix length in tokens, for "more demonstrations at equal prefix
  length" comparisons (k·n shots from `Task.demonstrations` against n shots read k times).
- Compute accounting (`StepCost`, `ift_step_costs`, `icl_cost`, `gradient_step_costs`): how many tokens a
  method's tuning runs through the model, step by step and cumulatively (`tune_tokens`).

Compute accounting, for a prefix of L tokens (BOS included when the tokenizer adds one):

- ICL (and IFT step 1): one forward pass over the L demonstration tokens; token j attends to j+1 keys.
- IFT step t >= 2: the L demonstration tokens are read again while attending to the cached K̃ₜ₋₁ (L keys) and
  to their own causal prefix: L tokens processed, attention context up to 2L.
  So after step t IFT has processed t·L tokens: `tune_tokens = t·L`.
- Gradient tuning (`ift.gradient.GradientTuner`), step s >= 2: one forward and one backward pass over the
  leave-one-out rows (each demonstration's query and answer tokens but the last, Q tokens in all) with the
  prefix in front; the backward stops at the prefix K/V (they are leaves), so it covers the same Q tokens.
  A backward pass costs about twice a forward one, so `tune_tokens + 2·tune_backward_tokens` is a
  forward-token equivalent.
Query-time cost is not counted here: every tuned or ICL prefix of L tokens costs the same per query.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ift.example import SEPARATOR
from ift.prefix import TunedPrefix
from ift.tuner import ForwardTuner


def icl_prefix(lm, demo_text: str) -> TunedPrefix:
    """The plain ICL prefix of `demo_text` (one forward pass): IFT's step 1, meta["method"] = "icl".

    `score_examples(lm, examples, prefix=icl_prefix(lm, text))` gives the same scores as
    `score_examples(lm, examples, demonstrations=text)`.
    """
    if not isinstance(demo_text, str) or not demo_text.strip():
        raise ValueError(f"demo_text must be a non-empty demonstration string, got {demo_text!r}")
    prefix = next(iter(ForwardTuner(lm).steps(demo_text, 1)))
    meta = {k: v for k, v in prefix.meta.items() if k not in ("eta", "beta", "position_mode")}
    meta["method"] = "icl"
    prefix.meta = meta
    return prefix


def repeat_demonstrations(demo_text: str, r: int) -> str:
    """The demonstrations r times in one text (r = 1: `demo_text` itself).

    A demonstration text from `Task.demonstrations` ends with the separator "\\n\\n", so the copies follow each
    other like extra demonstrations; a text without it gets the separator between copies.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (number of copies) must be an integer >= 1, got {r!r}")
    if not isinstance(demo_text, str) or not demo_text.strip():
        raise ValueError(f"demo_text must be a non-empty demonstration string, got {demo_text!r}")
    sep = "" if demo_text.endswith(SEPARATOR) else SEPARATOR
    return sep.join([demo_text] * r)


def prefix_tokens(lm, demo_text: str) -> int:
    """Number of prefix tokens the model reads for `demo_text` (special tokens such as BOS included,
    exactly as the tuner and scorer tokenise it; "" gives the zero-shot prefix: BOS alone, or 0)."""
    if not isinstance(demo_text, str):
        raise ValueError(f"demo_text must be a string, got {type(demo_text).__name__}")
    return len(lm.tokenizer(demo_text, add_special_tokens=True).input_ids)


@dataclass(frozen=True)
class StepCost:
    """What one tuning step runs through the model.

    tokens: tokens processed by forward passes in this step; backward_tokens: tokens a backward pass runs
    through (0 for forward-only methods); context: the longest attention context of the step (keys seen by
    its last token); attended: query-key pairs of the step's forward attention (sum over processed tokens of
    the keys each attends to); tune_tokens / tune_backward_tokens / tune_attended: the same summed over steps
    1..step (what the results store's per-step `tune_tokens` holds).
    """

    step: int
    tokens: int
    context: int
    attended: int
    tune_tokens: int
    tune_attended: int
    backward_tokens: int = 0
    tune_backward_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_length(L: int, name: str = "L") -> None:
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"{name} (prefix length in tokens) must be an integer >= 1, got {L!r}")


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")


def ift_step_costs(L: int, T: int) -> list[StepCost]:
    """Per-step cost of IFT over a prefix of L tokens, steps 1..T (step 1 = the ICL forward pass)."""
    _check_length(L)
    _check_T(T)
    causal = L * (L + 1) // 2
    out, total, total_att = [], 0, 0
    for t in range(1, T + 1):
        attended = causal if t == 1 else L * L + causal
        total += L
        total_att += attended
        out.append(StepCost(t, L, L if t == 1 else 2 * L, attended, total, total_att))
    return out


def icl_cost(L: int) -> StepCost:
    """The cost of building an ICL prefix of L tokens (one forward pass; = IFT's step 1)."""
    return ift_step_costs(L, 1)[0]


def gradient_step_costs(L: int, row_lengths: Sequence[int], T: int) -> list[StepCost]:
    """Per-step cost of `GradientTuner` (steps 1..T): step 1 is the ICL forward pass; every later step one
    forward and one backward pass over the leave-one-out rows (row i: `row_lengths[i]` tokens attending to
    the L prefix keys, its own demonstration's masked out but still computed, plus its own causal prefix)."""
    _check_length(L)
    _check_T(T)
    if not row_lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in row_lengths):
        raise ValueError(f"row_lengths must be a non-empty list of integers >= 1, got {row_lengths!r}")
    first = icl_cost(L)
    Q = sum(row_lengths)
    row_attended = sum(n * L + n * (n + 1) // 2 for n in row_lengths)
    context = L + max(row_lengths)
    out = [first]
    for s in range(2, T + 1):
        prev = out[-1]
        out.append(StepCost(s, Q, context, row_attended, prev.tune_tokens + Q, prev.tune_attended + row_attended,
                            Q, prev.tune_backward_tokens + Q))
    return out
