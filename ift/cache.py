"""Building transformers `DynamicCache` objects from per-layer key/value tensors.

A forward pass appends to the cache it is given, so every use needs a fresh cache object; the tensors
inside can be shared views (e.g. a [1, ...] prefix expanded over the batch without a copy).
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache

from ift.settings import PAPER


@functools.cache
def _cache_arg(model_class) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run(model, cache=None, **inputs):
    """`model(**inputs)` with `cache` under the argument name this transformers release uses: `cache` in
    recent 5.x, `past_key_values` in earlier ones (accepted with a warning until 5.40, then gone)."""
    if cache is not None:
        inputs[_cache_arg(type(model))] = cache
    return model(**inputs)


def output_cache(out):
    """The cache a forward pass returned (`out.cache`, or `out.past_key_values` in earlier 5.x)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def make_cache(model, keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    """A fresh cache holding these per-layer tensors ([batch, kv_heads, seq, head_dim]).

    Built from the model's config so sliding-window models (Gemma 3) get the right layer kinds.
    """
    cache = DynamicCache(config=model.config)
    for i, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, i)
    return cache


@torch.no_grad()
def cache_geometry(model) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(kv_heads, head_dim) of every layer's keys and values, from a 1-token forward pass: configs name
    these in too many ways (GQA, MQA, per-model head_dim) to be read reliably."""
    device = next(model.parameters()).device
    out = run(model, input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True)
    keys, values = cache_tensors(output_cache(out))
    return [(k.shape[1], k.shape[3]) for k in keys], [(v.shape[1], v.shape[3]) for v in values]


def cache_tensors(cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def uses_alibi(model) -> bool:
    """ALiBi models (BLOOM) have no absolute positions: a re-read cannot be 'aligned' to the cached copy."""
    return model.config.model_type == "bloom" or bool(getattr(model.config, "alibi", False))


POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


def max_positions(model) -> tuple[str, int] | None:
    """(config key, value): how many positions the model was built for. Learned position embeddings (GPT-2,
    OPT) fail past it with an IndexError; rotary ones (Llama) run on silently, untrained. None for ALiBi."""
    if uses_alibi(model):
        return None
    cfg = model.config.get_text_config(decoder=True)
    for key in POSITION_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return key, value
    return None


def context_limit(model) -> int | None:
    """How many cached positions every layer keeps: sliding-window layers drop older ones.

    Beyond this, a prefix cache is silently truncated and no longer equals the full-attention prefix.
    """
    cfg = model.config.get_text_config(decoder=True)
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None) or []
    if window and (not layer_types or "sliding_attention" in layer_types):
        return int(window) - 1
    return None


def fit_check(model, demo: int, query: int = 0, answer: int = 0, T: int = 1, position_mode: str = PAPER.position_mode,
              example: int | None = None) -> dict:
    """Raise ValueError unless `demo` demonstration tokens plus the longest example (`query` + `answer`
    tokens, example index `example`) fit the model's positions and sliding window, and so does tuning for
    T steps (the re-read sits at positions demo..2*demo-1 in "continue" mode; the cache holds 2*demo entries
    in both modes). Returns the lengths, for logging."""
    scoring = demo + query + answer
    tuning_positions = 2 * demo if T > 1 and position_mode == "continue" else demo
    tuning_cache = 2 * demo if T > 1 else demo
    positions = max_positions(model)
    window = context_limit(model)
    lengths = {"demo_tokens": demo, "query_tokens": query, "answer_tokens": answer, "scoring_positions": scoring,
               "tuning_positions": tuning_positions, "max_positions": positions[1] if positions else None,
               "sliding_window": window}
    what = f"the demonstrations are {demo} tokens"
    if query or answer:
        what += (f" and the longest example {query} query + {answer} answer tokens"
                 + (f" (example {example})" if example is not None and example >= 0 else "")
                 + f", so scoring needs {scoring} positions")
    advice = ("Use fewer or shorter demonstrations (a lower n_shot, or task.demo_max_chars to draw only short "
              "ones); a smaller task.eval_limit does not help "
              "unless it drops the longest example")
    if positions is not None:
        key, limit = positions
        if max(scoring, tuning_positions) > limit:
            tuning = ""
            if tuning_positions > limit:
                tuning = (f"; tuning (T={T}, position_mode='continue') re-reads the demonstrations at positions "
                          f"{demo}..{2 * demo - 1}, so it needs {tuning_positions}")
                if scoring <= limit:
                    advice += ", or position_mode='aligned' (re-reads at 0..L-1, needing only L)"
            raise ValueError(f"too long for this model: {what}{tuning}, but the model has {limit} positions "
                             f"(config {key}={limit}). {advice}.")
    if window is not None and max(scoring, tuning_cache) > window:
        tuning = (f"; tuning (T={T}) caches the demonstrations twice, {tuning_cache} entries"
                  if tuning_cache > window else "")
        raise ValueError(f"too long for this model: {what}{tuning}, but this model's sliding-window layers keep only "
                         f"{window} cached positions, so the prefix would be silently truncated. {advice}.")
    return lengths
