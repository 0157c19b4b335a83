"""Building transformers `DynamicCache` objects from per-layer key/value tensors.

A forward pass appends to the cache it is given, so every use needs a fresh cache object; the tensors
inside can be shared views (e.g. a [1, ...] prefix expanded over the batch without a copy).
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache


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


def cache_tensors(cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


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


def check_fits(model, length: int, what: str) -> None:
    limit = context_limit(model)
    if limit is not None and length > limit:
        raise ValueError(
            f"{what} needs {length} cached positions but this model's sliding-window layers keep only {limit}; "
            "use fewer or shorter demonstrations"
        )
