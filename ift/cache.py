"""Building transformers `DynamicCache` objects from per-layer key/value tensors.

A forward pass appends to the cache it is given, so every use needs a fresh cache object; the tensors
inside can be shared views (e.g. a [1, ...] prefix expanded over the batch without a copy).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


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
