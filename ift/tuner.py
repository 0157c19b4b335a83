"""Iterative forward tuning of a demonstration cache (the paper's Eqs. 6-7).

Step 1 is a plain forward pass over the demonstrations: its K/V are the ordinary ICL prefix (K̃₁, Ṽ₁).
At step t ≥ 2 the demonstrations are read again while attending to [K̃ₜ₋₁ ‖ own K]; their present keys
Kₜ give the pseudo-gradient G = Kₜ − K̃ₜ₋₁, and with momentum M = G + βM (M = G at the first update)
the cache moves by K̃ₜ = K̃ₜ₋₁ + ηM. Values are updated the same way with their own momentum.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ift.cache import cache_tensors, fit_check, output_cache, run, uses_alibi
from ift.prefix import TunedPrefix, _cache_dtype, model_fingerprint
from ift.settings import (
    PAPER,
    POSITION_MODE_CHOICES,
    POSITION_MODES,
    check_beta,
    check_eta,
    check_position_mode,
    check_T,
)

__all__ = ["POSITION_MODES", "POSITION_MODE_CHOICES", "ForwardTuner", "resolve_position_mode", "validate_hparams"]


def resolve_position_mode(model, position_mode: str) -> str:
    """The concrete mode for this model: "auto" becomes "aligned" (the better mode in docs/results.md), or
    "continue" for ALiBi models, which have no absolute positions to align."""
    if position_mode != "auto":
        return position_mode
    return "continue" if uses_alibi(model) else "aligned"


def validate_hparams(eta: float, beta: float, position_mode: str, T: int | None = None) -> None:
    """The settings module's checks (ift/settings.py), the ones the config schema uses too."""
    check_eta(eta)
    check_beta(beta)
    check_position_mode(position_mode)
    if T is not None:
        check_T(T)


class ForwardTuner:
    """Tunes the K/V of a demonstration string by repeated forward passes of a frozen model.

    position_mode "continue": the re-read copy sits at positions L..2L-1 after the cached one (the
    reference code's behaviour, so G also carries a positional shift); "aligned": it is re-read at
    positions 0..L-1, so G reflects only what the cached context adds; "auto": aligned unless the model
    uses ALiBi (then continue). `self.position_mode` is always the concrete mode.

    The defaults are the paper's setting (ift.settings.PAPER): a caller that reads a fixed step gets about
    ICL with it for small T, where the study default (η = 0.1, aligned) falls below ICL (docs/design.md).
    """

    def __init__(self, lm, eta: float = PAPER.eta, beta: float = PAPER.beta, position_mode: str = PAPER.position_mode):
        validate_hparams(eta, beta, position_mode)
        position_mode = resolve_position_mode(lm.model, position_mode)
        if position_mode == "aligned" and uses_alibi(lm.model):
            raise ValueError(f"position_mode='aligned' is impossible for {lm.model.config.model_type} (ALiBi has "
                             "no absolute positions to align); use position_mode='continue'")
        self.lm, self.eta, self.beta, self.position_mode = lm, eta, beta, position_mode

    def encode(self, demo_text: str) -> torch.Tensor:
        if not demo_text or not demo_text.strip():
            raise ValueError("demonstrations are empty: tuning needs at least one demonstration")
        ids = self.lm.tokenizer(demo_text, add_special_tokens=True, return_tensors="pt").input_ids
        return ids.to(self.lm.device)

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, prefix: TunedPrefix | None):
        L = ids.shape[1]
        model = self.lm.model
        if prefix is None:
            out = run(model, input_ids=ids, position_ids=torch.arange(L, device=ids.device)[None], use_cache=True)
            keys, values = cache_tensors(output_cache(out))
            return keys, values
        start = 0 if self.position_mode == "aligned" else L
        out = run(
            model,
            cache=prefix.to_cache(model),
            input_ids=ids,
            attention_mask=torch.ones(1, 2 * L, dtype=torch.long, device=ids.device),
            position_ids=torch.arange(start, start + L, device=ids.device)[None],
            use_cache=True,
        )
        keys, values = cache_tensors(output_cache(out))
        # the cache now holds [K̃ₜ₋₁ ‖ Kₜ]: the present keys of the re-read are the last L positions
        return [k[:, :, L:] for k in keys], [v[:, :, L:] for v in values]

    def steps(self, demo_text: str, T: int, resume_from: TunedPrefix | None = None) -> Iterator[TunedPrefix]:
        """Yield the prefix after each step t = 1..T (or from resume_from.step + 1).

        If an update produces non-finite values (keys, values, momentum or gradient norms) or keys/values
        beyond the model dtype's range, the last K̃ without them is yielded once more with `diverged` set to
        the reason (its grad norms too, so nothing non-finite leaves the tuner), and tuning stops.
        """
        validate_hparams(self.eta, self.beta, self.position_mode, T)
        ids = self.encode(demo_text)
        L = ids.shape[1]
        fit_check(self.lm.model, L, T=T, position_mode=self.position_mode)
        token_ids = ids[0].tolist()
        meta = {
            "model": model_fingerprint(self.lm),
            "demo_text": demo_text,
            "eta": self.eta,
            "beta": self.beta,
            "position_mode": self.position_mode,
        }
        if resume_from is None:
            keys, values = self._forward(ids, None)
            n = len(keys)
            prefix = TunedPrefix([k.float() for k in keys], [v.float() for v in values], 1, token_ids,
                                 [0.0] * n, [0.0] * n, meta)
            yield prefix
        else:
            if resume_from.token_ids != token_ids:
                raise ValueError("resume_from was tuned on other demonstrations than demo_text")
            if resume_from.step > 1 and (resume_from.momentum_k is None or resume_from.momentum_v is None):
                raise ValueError(f"resume_from (step {resume_from.step}) has no momentum: only a prefix made by "
                                 "ForwardTuner can resume forward tuning")
            prefix = resume_from
        for t in range(prefix.step + 1, T + 1):
            prefix = self._update(ids, prefix, t)
            yield prefix
            if prefix.diverged:
                return

    def _update(self, ids: torch.Tensor, prev: TunedPrefix, t: int) -> TunedPrefix:
        present_k, present_v = self._forward(ids, prev)
        new = {}
        for name, old, present, momentum in (("k", prev.keys, present_k, prev.momentum_k),
                                             ("v", prev.values, present_v, prev.momentum_v)):
            grads = [p.float() - o for p, o in zip(present, old)]
            moms = grads if momentum is None else [g + self.beta * m for g, m in zip(grads, momentum)]
            new[name] = ([o + self.eta * m for o, m in zip(old, moms)], moms,
                         [torch.linalg.vector_norm(g).item() for g in grads])
        (keys, mk, nk), (values, mv, nv) = new["k"], new["v"]
        bad = self._divergence(t, keys, values, mk, mv, nk, nv)
        if bad:  # keep the last good state, its grad norms included: nothing non-finite leaves the tuner
            return TunedPrefix(prev.keys, prev.values, prev.step, prev.token_ids, prev.grad_norms_k,
                               prev.grad_norms_v, prev.meta, prev.momentum_k, prev.momentum_v,
                               diverged=f"{bad}; the prefix, momentum and grad norms are those of step {prev.step}, "
                                        "the last one with finite values (lower eta)")
        return TunedPrefix(keys, values, t, prev.token_ids, nk, nv, prev.meta, mk, mv)

    def _divergence(self, t, keys, values, mk, mv, nk, nv) -> str | None:
        """Why step t diverged, or None. Values must also fit the dtype the model reads the cache in: an fp32
        1e5 is inf in fp16. A grad norm overflows to inf before the keys do, so it is checked too."""
        for what, norms in (("key grad norm", nk), ("value grad norm", nv)):
            for i, n in enumerate(norms):
                if not math.isfinite(n):
                    return f"non-finite {what} ({n}) at step {t}, layer {i}"
        dtype = _cache_dtype(self.lm.model)
        for what, ts, top in (("keys", keys, torch.finfo(dtype).max), ("values", values, torch.finfo(dtype).max),
                              ("key momentum", mk, math.inf), ("value momentum", mv, math.inf)):
            for i, x in enumerate(ts):
                peak = x.abs().amax().item()
                if not peak < math.inf:  # also NaN
                    return f"non-finite {what} at step {t}, layer {i}"
                if peak > top:
                    return f"{what} at step {t}, layer {i} exceed the range of {dtype} ({peak:.3g})"
        return None
