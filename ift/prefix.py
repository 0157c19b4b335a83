"""A tuned demonstration prefix: per-layer K̃/Ṽ after some tuning step, savable for plug-and-play reuse."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ift.cache import cache_geometry, make_cache


def model_fingerprint(lm) -> dict:
    """What must match for a saved prefix to mean anything to a model: architecture, cache shapes, and a
    sample of the input embeddings (cheap, and differs between checkpoints of one architecture)."""
    cfg = lm.model.config.get_text_config(decoder=True)
    emb = lm.model.get_input_embeddings().weight
    sample = emb[: min(4, emb.shape[0]), : min(8, emb.shape[1])].detach().float().cpu().flatten().tolist()
    return {
        "name": lm.name,
        "model_type": cfg.model_type,
        "num_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "embedding_sample": [round(x, 6) for x in sample],
    }


def fingerprint_mismatch(saved: dict, current: dict) -> str | None:
    for key in ("model_type", "num_layers", "hidden_size", "vocab_size"):
        if saved.get(key) != current.get(key):
            return f"{key}: saved {saved.get(key)!r}, this model {current.get(key)!r}"
    a, b = torch.tensor(saved.get("embedding_sample") or []), torch.tensor(current["embedding_sample"])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-2, atol=1e-3):
        return "the input embeddings differ (another checkpoint of the same architecture)"
    return None


@dataclass
class TunedPrefix:
    """K̃ₜ/Ṽₜ for the demonstration tokens after step `step` (step 1 = the plain ICL cache).

    Tensors are fp32 masters of shape [1, kv_heads, L, head_dim]; `to_cache` casts them for the model.
    `momentum_*` is the optimiser state needed to resume tuning (None at step 1).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    step: int
    token_ids: list[int]
    grad_norms_k: list[float]
    grad_norms_v: list[float]
    meta: dict = field(default_factory=dict)
    momentum_k: list[torch.Tensor] | None = None
    momentum_v: list[torch.Tensor] | None = None
    diverged: str | None = None
    _cast: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def to_cache(self, model, batch_size: int = 1):
        """A fresh cache with this prefix broadcast over the batch (expand: a view, no copy on our side)."""
        dtype = _cache_dtype(model)
        key = (dtype, self.keys[0].device)
        if key not in self._cast:
            self._cast.clear()
            self._cast[key] = ([k.to(dtype) for k in self.keys], [v.to(dtype) for v in self.values])
        ks, vs = self._cast[key]
        expand = lambda t: t.expand(batch_size, *t.shape[1:])  # noqa: E731
        return make_cache(model, [expand(k) for k in ks], [expand(v) for v in vs])

    def save(self, path) -> Path:
        """Write tensors (safetensors) and metadata (JSON inside the same file) for later `load`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            tensors[f"layer.{i}.key"] = k.detach().contiguous().cpu()
            tensors[f"layer.{i}.value"] = v.detach().contiguous().cpu()
        if self.momentum_k is not None:
            for i, (mk, mv) in enumerate(zip(self.momentum_k, self.momentum_v)):
                tensors[f"layer.{i}.momentum_key"] = mk.detach().contiguous().cpu()
                tensors[f"layer.{i}.momentum_value"] = mv.detach().contiguous().cpu()
        header = {
            "step": self.step,
            "token_ids": self.token_ids,
            "grad_norms_k": self.grad_norms_k,
            "grad_norms_v": self.grad_norms_v,
            "diverged": self.diverged,
            "meta": self.meta,
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"ift": json.dumps(header)})
        tmp.replace(path)  # atomic: a killed job never leaves a half-written prefix
        return path

    @classmethod
    def load(cls, path, lm) -> TunedPrefix:
        """Load a saved prefix for `lm`; refuses a prefix made by another model or tokenizer, and a file that
        is not an ift prefix or is damaged (missing layers, wrong shapes, NaN/inf), naming the file and why."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except Exception as err:  # noqa: BLE001 - not safetensors, truncated, unreadable
            raise ValueError(f"not an ift prefix file: {path} is not a readable safetensors file ({err})") from err
        if "ift" not in metadata:
            raise ValueError(f"not an ift prefix file: {path} (a safetensors file without ift's metadata; "
                             "write prefixes with TunedPrefix.save)")
        try:
            header = json.loads(metadata["ift"])
            meta, step, token_ids = header["meta"], header["step"], header["token_ids"]
            norms_k, norms_v, diverged = header["grad_norms_k"], header["grad_norms_v"], header.get("diverged")
            demo_text = meta["demo_text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"prefix file {path}: its ift metadata is incomplete or unreadable ({err!r})") from err
        problem = fingerprint_mismatch(meta.get("model", {}), model_fingerprint(lm))
        if problem:
            raise ValueError(f"prefix {path} was tuned on model {meta.get('model', {}).get('name')!r}, "
                             f"not this one ({lm.name!r}): {problem}")
        ids = lm.tokenizer(demo_text, add_special_tokens=True).input_ids
        if ids != token_ids:
            raise ValueError(f"prefix {path}: this tokenizer splits the demonstrations differently from the one "
                             "the prefix was tuned with (a different tokenizer)")
        tensors = load_file(str(path), device=str(lm.device))
        k_geo, v_geo = cache_geometry(lm.model)
        has_m = any(name.startswith("layer.") and ".momentum_" in name for name in tensors)
        problem = _check_header(step, norms_k, norms_v, len(k_geo), has_m, meta)
        if problem:
            raise ValueError(f"prefix file {path}: {problem}")
        names = ("key", "value", "momentum_key", "momentum_value") if has_m else ("key", "value")
        for i, (kg, vg) in enumerate(zip(k_geo, v_geo)):
            for name in names:
                problem = _check_tensor(tensors.get(f"layer.{i}.{name}"), f"layer.{i}.{name}",
                                        (1, *(kg if "key" in name else vg)), len(token_ids))
                if problem:
                    raise ValueError(f"prefix file {path}: {problem}")
        get = lambda name: [tensors[f"layer.{i}.{name}"] for i in range(len(k_geo))]  # noqa: E731
        return cls(get("key"), get("value"), step, token_ids, norms_k, norms_v, meta,
                   get("momentum_key") if has_m else None, get("momentum_value") if has_m else None, diverged)


def _check_header(step, norms_k, norms_v, n_layers: int, has_momentum: bool, meta: dict) -> str | None:
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        return f"step must be an integer >= 1, got {step!r}"
    for what, norms in (("grad_norms_k", norms_k), ("grad_norms_v", norms_v)):
        if not isinstance(norms, list) or len(norms) != n_layers:
            return f"{what} must list one number per layer ({n_layers}), got {norms!r}"
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in norms):
            return f"{what} holds non-numbers or non-finite values: {norms}"
    if has_momentum and step == 1:
        return "it holds momentum at step 1 (there is none before the first update, step 2)"
    if not has_momentum and step > 1 and meta.get("method", "ift") == "ift":
        return f"it is an IFT prefix at step {step} without its momentum tensors (needed to resume tuning)"
    return None


def _check_tensor(t, name: str, head: tuple[int, int, int], length: int) -> str | None:
    """A problem with one saved tensor, which must be [1, kv_heads, L, head_dim] and finite."""
    want = [head[0], head[1], length, head[2]]
    if t is None:
        return f"tensor {name} is missing"
    if list(t.shape) != want:
        return (f"tensor {name} has shape {list(t.shape)}, but this model's cache for {length} demonstration "
                f"tokens is [1, kv_heads, L, head_dim] = {want}")
    if not t.dtype.is_floating_point or not bool(torch.isfinite(t).all()):
        return f"tensor {name} holds non-finite values (NaN or inf) or is not floating point ({t.dtype})"
    return None


def _cache_dtype(model) -> torch.dtype:
    """The dtype the attention layers produce K/V in (bitsandbytes models compute in their compute dtype)."""
    emb = model.get_input_embeddings().weight
    return emb.dtype if emb.dtype.is_floating_point else torch.float32
