"""RQ2: what does it cost to answer queries with a tuned prefix instead of concatenated demonstrations?

The paper (Fig. 3) reports the largest batch each method fits on one GPU; we also report throughput.
On a GPU: for each method, find the largest batch that fits (double until out of memory, then bisect, up to
`limit`, repeating examples to fill a batch), then measure throughput and peak memory at that batch. A search
that reached `limit` is recorded as `capped` (the true maximum is at least that; reports print "≥ N"). On
CPU, where "out of memory" means swapping or the OOM killer rather than a catchable error, we measure at fixed
batch sizes instead.

Peak memory (`peak_mem_mb`) is the growth above what was held when the measurement started (the weights and
the prefix), on both devices: on CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` minus
`memory_allocated` before (bytes held by tensors; `peak_total_mb` keeps the total); on CPU, the growth of the
process's resident set size (psutil RSS, sampled every 2 ms in a background thread). RSS includes allocator
caching, so CPU numbers are an upper bound on what the tensors need and are only comparable within one process.
"""
from __future__ import annotations

import gc
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence

import psutil
import torch

log = logging.getLogger(__name__)


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
    """Run `fn` once; return {queries_per_s, peak_mem_mb, peak_total_mb, seconds}.

    peak_mem_mb is the growth above what was held when the call started (the weights, the prefix), on CUDA as
    on CPU, so the two devices measure the same thing; peak_total_mb (CUDA only, else None) adds what was
    already held: the memory the device needs for this model and batch."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        total = torch.cuda.max_memory_allocated(device)
        peak, total_mb = total - held, total / 2**20
    else:
        with _PeakRSS() as rss:
            start = time.perf_counter()
            out = fn()  # held until the last sample: what fn returns is part of its peak
            seconds = time.perf_counter() - start
        del out
        peak, total_mb = rss.growth_bytes, None
    return {"queries_per_s": n_queries / seconds if seconds > 0 else float("inf"),
            "peak_mem_mb": peak / 2**20, "peak_total_mb": total_mb, "seconds": seconds}


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


def query_tokens(tok, example) -> int:
    """The longest (context + continuation) of an example, in tokens: what its query costs the model."""
    return max(len(tok(ctx + cont, add_special_tokens=False).input_ids)
               for ctx, cont in zip(example.contexts, example.continuations))


def repeated(examples: Sequence, n: int) -> list:
    """The first n of `examples` repeated in turn: a batch larger than the examples at hand."""
    return [examples[i % len(examples)] for i in range(n)]


def run_efficiency_study(lm, examples: Sequence, demo_text: str, prefix, batch_sizes: Sequence[int] = (1, 4, 16),
                         device=None, limit: int = 4096, search: bool | None = None) -> list[dict]:
    """Measure ICL (demonstrations concatenated to every query) against the tuned prefix, same examples.

    Rows: {method: "icl"|"tuned", device, batch_size, queries_per_s, tokens_per_query, peak_mem_mb,
    peak_total_mb, max_batch, capped}. With the search (default on CUDA), max_batch is the largest batch that
    fits, searched up to `limit` over the examples longest first (in tokens), repeated as needed to fill a
    batch (each repeat runs as its own query); `capped` is true when `limit` itself fitted, so the true
    maximum is >= max_batch, and reports must say so. Throughput and memory are measured at max_batch over
    max(len(examples), max_batch) queries; if that runs out of memory (fragmentation, longer rows) the batch
    steps down until it fits, and max_batch is the batch measured. Without the search (CPU) each of
    `batch_sizes` is measured over the examples, and max_batch and capped are None. Each measurement follows
    one warm-up call, which also tokenises the queries (the scorer caches them), so tokenising is not timed.
    """
    from ift.scorer import score_examples

    if not examples:
        raise ValueError("the efficiency study needs at least one example")
    device = torch.device(device) if device is not None else torch.device(lm.device)
    search = device.type == "cuda" if search is None else search
    with_stats = _scorer_takes_stats(score_examples)
    # longest queries first, so that a search batch is the worst case for its size
    longest = sorted(examples, key=lambda ex: -query_tokens(lm.tokenizer, ex)) if search else list(examples)
    methods = {"icl": dict(demonstrations=demo_text), "tuned": dict(prefix=prefix)}
    rows = []
    for method, how in methods.items():
        def score(exs, bs, stats=None, how=how):
            extra = {"stats": stats} if with_stats and stats is not None else {}
            if search:  # repeats of an example are queries of their own, as distinct queries would be
                extra["share_queries"] = False
            return score_examples(lm, exs, batch_size=bs, progress=False, **how, **extra)

        if search:
            max_batch = find_max_batch(lambda b: score(repeated(longest, b), b), limit=limit)
            if max_batch == 0:
                raise RuntimeError(f"{method}: not even one query fits in memory")
            capped = max_batch == limit
            bs, m, stats = _measure_stepping_down(score, longest, max_batch, device, method)
            capped = capped and bs == max_batch
            rows.append(_row(lm, method, device, bs, m, stats, how, examples, max_batch=bs, capped=capped))
            continue
        for bs in batch_sizes:
            stats: dict = {}
            score(examples, bs, stats)  # warm-up (kernels, allocator), also collects token counts
            m = measure(lambda: score(examples, bs), len(examples), device)
            rows.append(_row(lm, method, device, bs, m, stats, how, examples, max_batch=None, capped=None))
    return rows


def _measure_stepping_down(score, longest, batch, device, method) -> tuple[int, dict, dict]:
    """(batch, measurement, token stats) at `batch`, or at the largest smaller batch whose warm-up and timing
    both fit: each out-of-memory error steps down by a tenth (at least one)."""
    while batch >= 1:
        queries = repeated(longest, max(len(longest), batch))
        stats: dict = {}
        try:
            score(queries, batch, stats)  # warm-up
            return batch, measure(lambda: score(queries, batch), len(queries), device), stats
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not is_oom(exc):
                raise
        _free_memory()
        smaller = batch - max(1, batch // 10)
        log.warning("%s: out of memory while timing at batch %d (the search's largest); trying %d",
                    method, batch, smaller)
        batch = smaller
    raise RuntimeError(f"{method}: the timing runs out of memory even at batch 1")


def _row(lm, method, device, bs, m, stats, how, examples, max_batch, capped) -> dict:
    if stats.get("queries"):
        tpq = stats["tokens"] / stats["queries"]
    else:
        tpq = _tokens_per_query(lm, examples, how.get("demonstrations"))
    return {"method": method, "device": device.type, "batch_size": bs, "queries_per_s": m["queries_per_s"],
            "tokens_per_query": tpq, "peak_mem_mb": m["peak_mem_mb"], "peak_total_mb": m["peak_total_mb"],
            "max_batch": max_batch, "capped": capped}
