"""A true-gradient counterpart of IFT: tune the same demonstration K/V cache by backpropagation.

The objective is the demonstrations' own answers, leave-one-out. For demonstration i, its query
(`contexts[gold]`) is read after the prefix and its answer (`continuations[gold]`) is scored, while the
prefix positions of demonstration i itself are masked out (attention mask 0), so the answer cannot be copied:

    loss = mean_i  −log p(answer_i | prefix ∖ demonstration i, context_i)     (summed over answer tokens)

The K/V of every layer are fp32 leaf tensors (fp64 for an fp64 model) starting at the ICL cache (IFT's step
1), moved by `torch.optim.Adam`; the model's weights are never updated. All demonstrations form one batch
(the prefix expanded over it, one attention-mask row per demonstration).

Known leak: the ICL cache of a demonstration j > i was computed while attending to demonstration i, so its
K/V carry some of i's content; masking i's own positions removes the direct copy path only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch

from ift.baselines import gradient_step_costs, icl_prefix
from ift.cache import fit_check, make_cache, run
from ift.example import SEPARATOR, Example
from ift.prefix import TunedPrefix, _cache_dtype, model_fingerprint
from ift.scorer import continuation_ids
from ift.settings import PAPER
from ift.tuner import ForwardTuner


def demonstration_text(demo_examples: Sequence[Example]) -> str:
    """The demonstration string of these examples, exactly as `Task.demonstrations` builds it."""
    _check_examples(demo_examples, minimum=1)
    return SEPARATOR.join(ex.demonstration for ex in demo_examples) + SEPARATOR


def _check_examples(demo_examples, minimum: int) -> None:
    if isinstance(demo_examples, (str, bytes)) or not isinstance(demo_examples, Sequence):
        raise ValueError(f"demo_examples must be a list of ift.Example, got {type(demo_examples).__name__}")
    if not demo_examples:
        raise ValueError("demo_examples is empty: tuning needs demonstrations")
    if len(demo_examples) < minimum:
        raise ValueError(f"demo_examples has {len(demo_examples)} demonstration; leave-one-out needs at least "
                         f"{minimum} (each answer is predicted from the others)")
    for n, ex in enumerate(demo_examples):
        if not isinstance(ex, Example):
            raise ValueError(f"demo_examples[{n}] is a {type(ex).__name__}, not an ift.Example")
        if ex.gold < 0:
            raise ValueError(f"demo_examples[{n}] (row {ex.index}) is unlabelled (gold=-1) and cannot serve as a "
                             "demonstration")


def _master_dtype(model) -> torch.dtype:
    return torch.float64 if _cache_dtype(model) == torch.float64 else torch.float32


@contextmanager
def _frozen(model):
    """No weight takes part in autograd (and none is left with a .grad); flags restored afterwards."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


class LeaveOneOut:
    """The leave-one-out answer loss of a fixed list of demonstrations, as a function of prefix K/V.

    Attributes: `demo_text` (what the prefix holds), `token_ids` (its tokens, special tokens included),
    `spans` (per demonstration, the [start, end) token positions masked out of its own row; a BOS token
    belongs to no demonstration), `row_lengths` (tokens each row runs: query + answer but its last token).
    """

    def __init__(self, lm, demo_examples: Sequence[Example]):
        _check_examples(demo_examples, minimum=2)
        self.lm = lm
        tok, device = lm.tokenizer, lm.device
        self.examples = list(demo_examples)
        self.demo_text = demonstration_text(self.examples)
        try:
            enc = tok(self.demo_text, add_special_tokens=True, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError) as err:
            raise ValueError("gradient tuning needs a fast tokenizer (offset mapping) to locate each "
                             f"demonstration's tokens: {err}") from err
        self.token_ids = list(enc.input_ids)
        offsets = list(enc.offset_mapping)
        L = self.L = len(self.token_ids)

        self.spans, rows, answers = [], [], []
        start = 0
        for n, ex in enumerate(self.examples):
            end = start + len(ex.demonstration)
            inside = [j for j, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
            if not inside:
                raise ValueError(f"demo_examples[{n}] (row {ex.index}) has no tokens in the demonstration text")
            self.spans.append((inside[0], inside[-1] + 1))
            start = end + len(SEPARATOR)
            context, answer = ex.contexts[ex.gold], ex.continuations[ex.gold]
            ctx_ids = tok(context, add_special_tokens=False).input_ids
            ans_ids = continuation_ids(tok, context, answer, ctx_ids)
            if not ctx_ids:
                raise ValueError(f"demo_examples[{n}] (row {ex.index}): empty context, nothing to predict from")
            if not ans_ids:
                raise ValueError(f"demo_examples[{n}] (row {ex.index}): answer {answer!r} tokenises to no tokens")
            rows.append(ctx_ids + ans_ids[:-1])
            answers.append((len(ctx_ids) - 1, ans_ids))
        self.row_lengths = [len(r) for r in rows]

        N, Q = len(rows), max(self.row_lengths)
        fit_check(lm.model, L, query=Q)  # each row runs at positions L..L+Q-1 after the whole prefix
        ids = torch.full((N, Q), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((N, L + Q), dtype=torch.long)
        mask[:, :L] = 1
        for i, (row, (a, b)) in enumerate(zip(rows, self.spans)):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, a:b] = 0  # demonstration i is invisible to its own answer
            mask[i, L: L + len(row)] = 1
        keep = sorted({p + k for p, ans in answers for k in range(len(ans))})
        col = {p: c for c, p in enumerate(keep)}
        self._ids = ids.to(device)
        self._mask = mask.to(device)
        self._positions = (L + torch.arange(Q)).expand(N, Q).to(device)
        self._keep = torch.tensor(keep, device=device)
        # (row, column of logits_to_keep, target token) for every answer token
        picks = [(i, col[p + k], t) for i, (p, ans) in enumerate(answers) for k, t in enumerate(ans)]
        self._rows = torch.tensor([i for i, _, _ in picks], device=device)
        self._cols = torch.tensor([c for _, c, _ in picks], device=device)
        self._targets = torch.tensor([t for _, _, t in picks], device=device)

    def _check_kv(self, keys, values) -> None:
        n = self.lm.model.config.get_text_config(decoder=True).num_hidden_layers
        if len(keys) != len(values) or len(keys) != n:
            raise ValueError(f"keys/values: {len(keys)} and {len(values)} layers given for a {n}-layer model")
        if keys[0].shape[-2] != self.L:
            raise ValueError(f"keys hold {keys[0].shape[-2]} positions but the demonstrations have {self.L} tokens")

    def losses(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-demonstration −log p(answer_i | prefix ∖ i, context_i), differentiable in keys and values.

        keys/values: per layer, [1, kv_heads, L, head_dim] (any float dtype; cast to the model's)."""
        self._check_kv(keys, values)
        model = self.lm.model
        dtype, N = _cache_dtype(model), self._ids.shape[0]
        expand = lambda t: t.to(dtype).expand(N, *t.shape[1:])  # noqa: E731
        cache = make_cache(model, [expand(k) for k in keys], [expand(v) for v in values])
        out = run(model, cache=cache, input_ids=self._ids, attention_mask=self._mask,
                  position_ids=self._positions, use_cache=True, logits_to_keep=self._keep)
        logits = out.logits.to(torch.promote_types(out.logits.dtype, torch.float32))
        lp = torch.log_softmax(logits, dim=-1)[self._rows, self._cols, self._targets]
        return -torch.zeros(N, dtype=lp.dtype, device=lp.device).index_add(0, self._rows, lp)

    def loss(self, keys, values) -> torch.Tensor:
        return self.losses(keys, values).mean()

    def gradient(self, keys, values) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(per-demonstration losses (detached), ∂loss/∂keys, ∂loss/∂values) at these K/V, loss = their mean."""
        leaves = [t.detach().requires_grad_(True) for t in (*keys, *values)]
        with torch.enable_grad(), _frozen(self.lm.model):
            losses = self.losses(leaves[: len(keys)], leaves[len(keys):])
            grads = torch.autograd.grad(losses.mean(), leaves)
        return losses.detach(), list(grads[: len(keys)]), list(grads[len(keys):])


def _check_lr(lr, betas) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not lr > 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if len(tuple(betas)) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


class GradientTuner:
    """Adam on the demonstration K/V against the leave-one-out answer loss (see the module docstring).

    `steps(demo_examples, T)` yields a `TunedPrefix` after every step s = 1..T: step 1 is the ICL cache (no
    update, equal to `ift.baselines.icl_prefix`), step s the cache after s − 1 Adam updates. Each prefix's
    `grad_norms_k/v` hold, per layer, the Frobenius norm of the true gradient that produced it (zeros at step 1,
    as IFT's pseudo-gradient norms), and `meta`:
      method "grad", lr, betas, loss (the LOO loss at this prefix, i.e. before the update that follows it),
      losses (per demonstration), tune_tokens / tune_backward_tokens (cumulative tokens through forward /
      backward passes, see `ift.baselines`), cost (this step's `StepCost` as a dict), step_s (seconds this
      step took: the update that produced it plus evaluating its loss), model, demo_text (so `save`/`load`
      work like IFT prefixes).
    The yielded tensors are detached copies; if an update gives non-finite values, the last good prefix is
    yielded again with `diverged` set and tuning stops. Resuming is not supported (momentum_k/v are None).

    lr: Adam moves each K/V entry (magnitude ~1-10) by about lr per step. On the bundled SmolLM2-135M with
    SST-2 one-shot demonstrations (2 of them), 1e-3 lowers the LOO loss steadily over 8-16 steps; 1e-2
    drives it to ~0.01 within 5 steps and over-fits (evaluation accuracy fell below ICL's), hence the default.
    """

    def __init__(self, lm, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999)):
        _check_lr(lr, betas)
        self.lm, self.lr, self.betas = lm, float(lr), tuple(float(b) for b in betas)

    def steps(self, demo_examples: Sequence[Example], T: int) -> Iterator[TunedPrefix]:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an integer >= 1, got {T!r}")
        t0 = time.perf_counter()
        objective = LeaveOneOut(self.lm, demo_examples)
        icl = icl_prefix(self.lm, objective.demo_text)
        if icl.token_ids != objective.token_ids:  # the tuner and the offsets must see the same tokens
            raise RuntimeError("tokenisation of the demonstrations differs between the ICL pass and the spans")
        costs = gradient_step_costs(objective.L, objective.row_lengths, T)
        dtype = _master_dtype(self.lm.model)
        keys = [k.detach().to(dtype).clone().requires_grad_(True) for k in icl.keys]
        values = [v.detach().to(dtype).clone().requires_grad_(True) for v in icl.values]
        n = len(keys)
        opt = torch.optim.Adam([*keys, *values], lr=self.lr, betas=self.betas)
        base = {"model": model_fingerprint(self.lm), "demo_text": objective.demo_text, "method": "grad",
                "objective": "leave-one-out answer NLL", "lr": self.lr, "betas": list(self.betas)}
        norms_k, norms_v = [0.0] * n, [0.0] * n
        prev = None
        for s in range(1, T + 1):
            if s < T:
                losses, gk, gv = objective.gradient(keys, values)
            else:
                with torch.no_grad():
                    losses = objective.losses(keys, values)
            loss = losses.mean().item()
            cost = costs[s - 1]
            meta = {**base, "loss": loss, "losses": losses.tolist(), "tune_tokens": cost.tune_tokens,
                    "tune_backward_tokens": cost.tune_backward_tokens, "cost": cost.to_dict(),
                    "step_s": time.perf_counter() - t0}
            prefix = TunedPrefix([k.detach().clone() for k in keys], [v.detach().clone() for v in values], s,
                                 objective.token_ids, norms_k, norms_v, meta)
            if not math.isfinite(loss):
                if prev is None:
                    raise RuntimeError(f"the leave-one-out loss of the ICL cache is not finite ({loss})")
                yield replace(prev, diverged=f"non-finite leave-one-out loss at step {s}")
                return
            yield prefix
            if s == T:
                return
            t0 = time.perf_counter()
            prev = prefix
            norms_k = [torch.linalg.vector_norm(g).item() for g in gk]
            norms_v = [torch.linalg.vector_norm(g).item() for g in gv]
            for p, g in zip([*keys, *values], [*gk, *gv]):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            bad = _divergence(s + 1, keys, values, _cache_dtype(self.lm.model))
            if bad:
                yield replace(prev, diverged=f"{bad}; the prefix is that of step {s}, the last good one (lower lr)")
                return


def _divergence(step: int, keys, values, dtype: torch.dtype) -> str | None:
    """Why the K/V after an update are unusable (non-finite, or beyond the range of the model's dtype), or None."""
    top = torch.finfo(dtype).max
    for what, ts in (("keys", keys), ("values", values)):
        for i, x in enumerate(ts):
            peak = x.detach().abs().amax().item()
            if not peak < math.inf:  # also NaN
                return f"non-finite {what} at step {step}, layer {i}"
            if peak > top:
                return f"{what} at step {step}, layer {i} exceed the range of {dtype} ({peak:.3g})"
    return None


def layer_cosines(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[float]:
    """Cosine similarity of a[l] and b[l] (flattened, in fp64) for every layer l; nan where either is zero."""
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} layers, b {len(b)}")
    out = []
    for x, y in zip(a, b):
        x, y = x.detach().double().flatten(), y.detach().double().flatten()
        nx, ny = torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)
        out.append(float("nan") if nx == 0 or ny == 0 else max(-1.0, min(1.0, (x @ y / (nx * ny)).item())))
    return out


def pseudo_gradient_cosine(lm, demo_examples: Sequence[Example], position_mode: str = PAPER.position_mode) -> dict:
    """Does IFT's pseudo-gradient point downhill? Per layer, the cosine between IFT's first pseudo-gradient
    G = K₂ − K̃₁ (the re-read at the ICL cache, before η) and the descent direction −∇ of the leave-one-out
    loss at the ICL cache, for keys and values: {"k": [cos per layer], "v": [...]} (plus "loss": the ICL
    cache's LOO loss)."""
    objective = LeaveOneOut(lm, demo_examples)
    first, second = ForwardTuner(lm, eta=1.0, beta=0.0, position_mode=position_mode).steps(objective.demo_text, 2)
    if second.diverged:
        raise RuntimeError(f"the pseudo-gradient is not finite: {second.diverged}")
    g_k = [b - a for a, b in zip(first.keys, second.keys)]
    g_v = [b - a for a, b in zip(first.values, second.values)]
    dtype = _master_dtype(lm.model)
    losses, grad_k, grad_v = objective.gradient([k.to(dtype) for k in first.keys],
                                                [v.to(dtype) for v in first.values])
    return {"k": layer_cosines(g_k, [-g for g in grad_k]), "v": layer_cosines(g_v, [-g for g in grad_v]),
            "loss": losses.mean().item()}
