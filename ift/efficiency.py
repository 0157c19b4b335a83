"""RQ2: what does it cost to answer queries with a tuned prefix instead of concatenated demonstrations?

The paper (Fig. 3) reports the largest batch each method fits on one GPU; we also report throughput.
On a GPU: for each method, find the largest batch that fits (double until out of memory, then bisect),
then measure throughput and peak memory at that batch. On CPU, where "out of memory" means swapping or
the OOM killer rather than a catchable error, we measure at fixed batch sizes instead.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (bytes held by
tensors); on CPU, the growth of the process's resident set size (psutil RSS, sampled every 2 ms in a
background thread) above its level when the measurement started. RSS includes allocator caching, so CPU
numbers are an upper bound on what the tensors need and are only comparable within one process.
"""
from __future__ import annotations

import gc
import inspect
import threading
import time
from collections.abc import Callable, Sequence

import psutil
import torch


def is_oom(exc: BaseException) -> bool:
    """CUDA's own OOM error, or a RuntimeError that says so (older torch, other backends, CPU allocators)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory() -> None:
    # the failed batch's activations stay referenced from the traceback until collected
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def find_max_batch(try_batch: Callable[[int], None], start: int = 1, limit: int = 4096,
                   is_oom: Callable[[BaseException], bool] = is_oom) -> int:
    """Largest batch size in [1, limit] for which `try_batch(b)` does not run out of memory (0 if none).

    Doubles from `start` until an OOM (or `limit`), then bisects between the last good and the first bad
    size. Assumes memory need grows with batch size. Any error that is not an OOM propagates.
    """
    if start < 1 or limit < start:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")

    def fits(b: int) -> bool:
        try:
            try_batch(b)
            return True
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not is_oom(exc):
                raise
        _free_memory()  # outside the except block, so the exception and its frames are already released
        return False

    good, b = 0, start
    while True:
        if not fits(b):
            bad = b
            break
        good = b
        if b == limit:
            return limit
        b = min(2 * b, limit)
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


class _PeakRSS:
    """Samples the process RSS in a background thread; `peak` is the largest growth above the start."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.proc = interval_s, psutil.Process()

    def __enter__(self):
        self.base = self.peak_rss = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    @property
    def growth_bytes(self) -> int:
        return self.peak_rss - self.base


def measure(fn: Callable[[], object], n_queries: int, device: torch.device | str | None = None) -> dict:
    """Run `fn` once; return {queries_per_s, peak_mem_mb, seconds} (peak memory as in the module docstring)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with _PeakRSS() as rss:
            start = time.perf_counter()
            fn()
            seconds = time.perf_counter() - start
        peak = rss.growth_bytes
    return {"queries_per_s": n_queries / seconds if seconds > 0 else float("inf"),
            "peak_mem_mb": peak / 2**20, "seconds": seconds}


def _scorer_takes_stats(score) -> bool:
    try:
        return "stats" in inspect.signature(score).parameters
    except (TypeError, ValueError):
        return False


def _tokens_per_query(lm, examples, demo_text: str | None) -> float:
    """Fallback count when the scorer reports none: (demonstrations +) context + every continuation."""
    tok = lm.tokenizer
    demo = len(tok(demo_text, add_special_tokens=True).input_ids) if demo_text else 0
    total = 0
    for ex in examples:
        ctx = len(tok(ex.contexts[0], add_special_tokens=False).input_ids)
        conts = sum(len(tok(c, add_special_tokens=False).input_ids) for c in ex.continuations)
        total += demo + ctx + conts
    return total / len(examples)


def run_efficiency_study(lm, examples: Sequence, demo_text: str, prefix, batch_sizes: Sequence[int] = (1, 4, 16),
                         device=None, limit: int = 4096, search: bool | None = None) -> list[dict]:
    """Measure ICL (demonstrations concatenated to every query) against the tuned prefix, same examples.

    Rows: {method: "icl"|"tuned", device, batch_size, queries_per_s, tokens_per_query, peak_mem_mb,
    max_batch}. On CUDA the batch size is the largest that fits (max_batch, searched up to
    min(limit, len(examples)) since the scorer runs each distinct query once); on CPU each of
    `batch_sizes` is measured and max_batch is None. `search` forces either (default: search on CUDA only).
    Each measurement follows one warm-up call.
    """
    from ift.scorer import score_examples

    if not examples:
        raise ValueError("the efficiency study needs at least one example")
    device = torch.device(device) if device is not None else torch.device(lm.device)
    search = device.type == "cuda" if search is None else search
    with_stats = _scorer_takes_stats(score_examples)
    # longest queries first, so that a search batch examples[:b] is the worst case for its size
    longest = sorted(examples, key=lambda ex: -max(len(c) for c in ex.contexts))
    methods = {"icl": dict(demonstrations=demo_text), "tuned": dict(prefix=prefix)}
    rows = []
    for method, how in methods.items():
        def score(exs, bs, stats=None, how=how):
            extra = {"stats": stats} if with_stats and stats is not None else {}
            return score_examples(lm, exs, batch_size=bs, progress=False, **how, **extra)

        if search:
            max_batch = find_max_batch(lambda b: score(longest[:b], b), limit=min(limit, len(longest)))
            if max_batch == 0:
                raise RuntimeError(f"{method}: not even one query fits in memory")
            sizes = [max_batch]
        else:
            max_batch, sizes = None, list(batch_sizes)
        for bs in sizes:
            stats: dict = {}
            score(examples, bs, stats)  # warm-up (kernels, allocator), also collects token counts
            m = measure(lambda: score(examples, bs), len(examples), device)
            if stats.get("queries"):
                tpq = stats["tokens"] / stats["queries"]
            else:
                tpq = _tokens_per_query(lm, examples, how.get("demonstrations"))
            rows.append({"method": method, "device": device.type, "batch_size": bs,
                         "queries_per_s": m["queries_per_s"], "tokens_per_query": tpq,
                         "peak_mem_mb": m["peak_mem_mb"], "max_batch": max_batch})
    return rows
