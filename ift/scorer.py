"""Multiple-choice scoring: the log-probability of each candidate continuation given its context.

Score semantics (as in lm-evaluation-harness): `sum_logprobs` is the summed log-probability of the
continuation's tokens (the paper's `lm_log_p`, used to pick answers); `mean_logprobs` divides it by the
number of continuation tokens (the paper's `norm_lm_log_p`).

Work is done once: every distinct query (demonstrations-or-nothing + context) is run once, in batches of
similar length, and its cache is shared by all its candidates; only continuation tokens after the first
are run again. Queries are right-padded and every pass gets explicit positions and a 2-D mask over
[prefix ‖ query ‖ continuation], so padding changes nothing.

`tokenization="harness"` encodes each (context, continuation) pair as lm-evaluation-harness does
(`_harness_pair`, docs/lmeval.md); the default keeps ift's rule (docs/design.md).
"""
from __future__ import annotations

import bisect
import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ift.cache import cache_tensors, fit_check, make_cache, output_cache, run
from ift.example import Example


@dataclass
class ExampleScore:
    sum_logprobs: list[float]
    mean_logprobs: list[float]
    n_tokens: list[int]
    gold: int

    @property
    def pred(self) -> int:
        return max(range(len(self.sum_logprobs)), key=self.sum_logprobs.__getitem__)

    @property
    def pred_norm(self) -> int:
        return max(range(len(self.mean_logprobs)), key=self.mean_logprobs.__getitem__)

    @property
    def correct(self) -> bool:
        return self.pred == self.gold

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.gold


def accuracy(scores: Sequence[ExampleScore]) -> tuple[float, float]:
    """(acc, acc_norm) over labelled examples."""
    labelled = [s for s in scores if s.gold >= 0]
    if not labelled:
        raise ValueError("no labelled examples to compute accuracy on")
    n = len(labelled)
    return sum(s.correct for s in labelled) / n, sum(s.correct_norm for s in labelled) / n


def continuation_ids(tok, context: str, continuation: str, ctx_ids: list[int]) -> list[int]:
    """Tokens of the continuation as the model would read them after the context: those of
    tok(context + continuation) after ctx_ids when that is a prefix of it, else tok(continuation). The one rule
    for the scorer and the gradient objective (ift/gradient.py), so both tokenise answers identically."""
    full = tok(context + continuation, add_special_tokens=False).input_ids
    if full[: len(ctx_ids)] == ctx_ids:
        return full[len(ctx_ids):]
    return tok(continuation, add_special_tokens=False).input_ids


@dataclass
class _Plan:
    rows: list[tuple[int, ...]]  # distinct query token sequences
    cands: list[list[tuple[int, list[int]]]]  # per example: (row, continuation ids) per candidate
    longest: tuple[int, int, int] = (0, 0, -1)  # (context, continuation tokens, example index), for fit_check


def _harness_pair(tok, context: str, continuation: str, special: bool) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's `TemplateLM._encode_pair`: trailing whitespace moves from the context to the
    continuation, and the continuation is whatever follows len(tok(context)) tokens in tok(context +
    continuation), with no check that tok(context) is a prefix of it."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx_ids = tok(context, add_special_tokens=special).input_ids
    return ctx_ids, tok(context + continuation, add_special_tokens=special).input_ids[len(ctx_ids):]


# tokenizer -> {(examples, base_ids, joint): _Plan}: the tuning loop and the RQ2 timings score the same examples
# again and again; tokenising them once keeps tokenisation out of every later (timed) call. Weak keys: a plan
# never outlives its tokenizer, and a new tokenizer at a reused address can never find an old plan.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
PLANS_KEPT = 4  # per tokenizer, most recently used first out


def _cached_plan(tok, examples: Sequence[Example], base_ids: list[int], joint: tuple[str, bool] | None,
                 share: bool = True) -> _Plan:
    """`_plan`, tokenised once per (tokenizer, examples' text, demonstrations, rule)."""
    key = (tuple((ex.contexts, ex.continuations, ex.index) for ex in examples), tuple(base_ids), joint, share)
    try:
        plans = _PLANS.setdefault(tok, OrderedDict())
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        return _plan(tok, examples, base_ids, joint, share)
    if key in plans:
        plans.move_to_end(key)
        return plans[key]
    plans[key] = plan = _plan(tok, examples, base_ids, joint, share)
    while len(plans) > PLANS_KEPT:
        plans.popitem(last=False)
    return plan


def _plan(tok, examples: Sequence[Example], base_ids: list[int], joint: tuple[str, bool] | None = None,
          share: bool = True) -> _Plan:
    """joint=(text, special): harness tokenization of text + context as one string (see score_examples).
    share=False: a query is shared by the candidates of its own example only (see score_examples)."""
    rows: dict[tuple, int] = {}
    texts: list[tuple[int, ...]] = []
    cands = []
    ctx_cache: dict[str, list[int]] = {}
    longest = (0, 0, -1)
    for e, ex in enumerate(examples):
        per = []
        for j, (ctx, cont) in enumerate(zip(ex.contexts, ex.continuations)):
            if joint is not None:
                ctx_ids, cont_ids = _harness_pair(tok, joint[0] + ctx, cont, joint[1])
                query = tuple(ctx_ids)
            else:
                if ctx not in ctx_cache:
                    ctx_cache[ctx] = tok(ctx, add_special_tokens=False).input_ids
                ctx_ids = ctx_cache[ctx]
                cont_ids = continuation_ids(tok, ctx, cont, ctx_ids)
                query = tuple(base_ids + ctx_ids)
            if not cont_ids:
                raise ValueError(f"example {ex.index}: candidate {j} ({cont!r}) tokenises to no tokens")
            if not query:
                raise ValueError(f"example {ex.index}: empty context and no prefix: nothing to condition on")
            key = query if share else (e, query)
            if key not in rows:
                rows[key] = len(texts)
                texts.append(query)
            per.append((rows[key], cont_ids))
            if len(ctx_ids) + len(cont_ids) > longest[0] + longest[1]:
                longest = (len(ctx_ids), len(cont_ids), ex.index)
        cands.append(per)
    return _Plan(texts, cands, longest)


@torch.no_grad()
def score_examples(lm, examples: Sequence[Example], prefix=None, demonstrations: str | None = None,
                   batch_size: int = 32, progress: bool = False, stats: dict | None = None,
                   tokenization: str = "ift", share_queries: bool = True) -> list[ExampleScore]:
    """Score every candidate of every example.

    prefix: a `TunedPrefix` (inference without demonstrations in the input);
    demonstrations: a string read before every query (the vanilla ICL baseline);
    neither: zero-shot (the tokenizer's BOS, if any, starts each query).
    stats, if given, receives the number of queries and of tokens the model processed.
    tokenization: "ift" (docs/design.md: demonstrations, context and continuation tokenised apart) or
    "harness" (lm-evaluation-harness's rule: demonstrations + context tokenised as one string, trailing
    whitespace moved to the continuation; with a prefix only the query side can follow it).
    share_queries=False: examples with the same text still run one query each (the candidates of one example
    always share theirs); RQ2 fills a batch past the number of examples with repeats this way (ift/efficiency.py).
    """
    if prefix is not None and demonstrations is not None:
        raise ValueError("give either a tuned prefix or demonstrations, not both")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenization not in ("ift", "harness"):
        raise ValueError(f"tokenization must be 'ift' or 'harness', got {tokenization!r}")
    tok, model, device = lm.tokenizer, lm.model, lm.device
    base_ids = [] if prefix is not None else tok(demonstrations or "", add_special_tokens=True).input_ids
    offset = prefix.length if prefix is not None else 0
    joint = None
    if tokenization == "harness":
        joint, base_ids = (demonstrations or "", prefix is None), []
    plan = _cached_plan(tok, examples, base_ids, joint, share_queries)

    # first-token log-probs come from the query pass; later continuation tokens from a second pass
    by_row: dict[int, list[tuple[int, int, list[int]]]] = {}
    for e, per in enumerate(plan.cands):
        for j, (row, cont) in enumerate(per):
            by_row.setdefault(row, []).append((e, j, cont))
    logprob = [[0.0] * len(per) for per in plan.cands]
    order = sorted(range(len(plan.rows)), key=lambda r: len(plan.rows[r]))
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    query, answer, index = plan.longest
    fit_check(model, offset or len(base_ids), query, answer, example=index)  # before any forward pass
    n_tokens = 0
    for batch in tqdm(batches, desc="scoring", disable=not progress, leave=False):
        n_tokens += _score_batch(model, batch, plan, by_row, logprob, offset, prefix, lm.pad_id, device)

    nan = [ex.index for ex, lp in zip(examples, logprob) if any(math.isnan(x) for x in lp)]
    if nan:  # NaN would silently pick candidate 0 (max over NaN) and count as a prediction
        cause = (f"the tuned prefix (step {prefix.step}) has keys/values the model cannot attend to: its tuning "
                 "diverged, lower eta" if prefix is not None else "the model produced non-finite logits")
        raise ValueError(f"{len(nan)} of {len(examples)} examples score NaN (first: example {nan[0]}): {cause}")
    if stats is not None:
        stats["queries"] = stats.get("queries", 0) + len(examples)
        stats["tokens"] = stats.get("tokens", 0) + n_tokens
    out = []
    for ex, per, lp in zip(examples, plan.cands, logprob):
        lens = [len(c) for _, c in per]
        out.append(ExampleScore(lp, [s / n for s, n in zip(lp, lens)], lens, ex.gold))
    return out


def _pad(seqs: list[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@contextmanager
def _own_position_only(model, columns: torch.Tensor, widest: int):
    """During one forward pass, the output head reads each row's hidden state at its own column of
    `logits_to_keep` only ([B, 1, H] instead of [B, K, H]).

    Why: `logits_to_keep` slices the same positions for every row, so a batch whose queries end at K different
    positions computed B x K rows of logits and used B of them; with Gemma 3's 262k-token vocabulary that was
    over half the scoring time. Whatever the model applies after its head (e.g. logit soft-capping) still
    applies. The head sees the same vectors as before, row by row. `widest`: the largest column (a host int,
    so that the check below never waits for the device).
    """
    head = model.get_output_embeddings()
    if head is None:
        yield
        return
    rows = torch.arange(len(columns), device=columns.device)

    def own_position(module, args):
        hidden = args[0]
        if hidden.shape[1] <= widest:  # a model that ignored logits_to_keep: refuse, never guess
            raise RuntimeError(f"{type(model).__name__} gave the output head {hidden.shape[1]} positions, fewer "
                               f"than the logits_to_keep columns it was asked for")
        return (hidden[rows, columns].unsqueeze(1), *args[1:])

    handle = head.register_forward_pre_hook(own_position)
    try:
        yield
    finally:
        handle.remove()


# logits turned into fp32 log-probabilities at once: rows x vocabulary <= this (256 MB of fp32), so that
# Gemma 3's 262k-token vocabulary never needs a [answers, tokens, vocab] fp32 copy
LOGSOFTMAX_ELEMENTS = 1 << 26


def _answer_logprobs(logits: torch.Tensor, rows: list[int], picks: list[tuple[int, int]]) -> torch.Tensor:
    """log_softmax(logits[rows[i]])[token] for each pick (i, token), as one fp32 tensor on the logits' device.

    logits: [R, V]; `rows`: the rows needed, `picks` sorted by i. Each needed row is normalised once (a label
    word shared by many candidates reads one row), `LOGSOFTMAX_ELEMENTS // V` rows at a time; the values are
    those of a log_softmax over the whole tensor, row by row. Index lists go to the device once."""
    device, vocab = logits.device, logits.shape[-1]
    per = max(1, LOGSOFTMAX_ELEMENTS // vocab)
    row_ids = torch.tensor(rows, dtype=torch.long).to(device)
    which = torch.tensor(picks, dtype=torch.long).reshape(-1, 2).to(device)  # [(row position, token)]
    starts = [i for i, _ in picks]
    out = torch.empty(len(picks), dtype=torch.float32, device=device)
    for s in range(0, len(rows), per):
        a, b = bisect.bisect_left(starts, s), bisect.bisect_left(starts, s + per)
        if a == b:
            continue
        lp = torch.log_softmax(logits.index_select(0, row_ids[s: s + per]).float(), dim=-1)
        out[a:b] = lp[which[a:b, 0] - s, which[a:b, 1]]
    return out


def _score_batch(model, batch, plan, by_row, logprob, offset, prefix, pad_id, device) -> int:
    """Score one batch of queries into `logprob`; returns the tokens processed. The only device-to-host
    transfer is one list of floats at the end (no per-answer `.item()`, no sync while the batch runs)."""
    queries = [plan.rows[r] for r in batch]
    sizes = [len(q) for q in queries]
    lengths = torch.tensor(sizes).to(device)
    ids, qmask = _pad(queries, pad_id, device)
    B, Q = ids.shape
    mask = torch.cat([torch.ones(B, offset, dtype=torch.long, device=device), qmask], dim=1)
    positions = (offset + torch.arange(Q, device=device)).expand(B, Q)
    firsts = [(b, e, j, cont) for b, r in enumerate(batch) for e, j, cont in by_row[r]]  # sorted by b
    later = [(b, e, j, cont) for b, e, j, cont in firsts if len(cont) > 1]
    # logits only where a first continuation token is predicted: the last real query token of each row
    ends = sorted({n - 1 for n in sizes})
    keep = torch.tensor(ends).to(device)
    columns = torch.tensor([bisect.bisect_left(ends, n - 1) for n in sizes]).to(device)  # own position in `keep`
    with _own_position_only(model, columns, len(ends) - 1):
        out = run(model, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=bool(later),
                  cache=prefix.to_cache(model, B) if prefix is not None else None, logits_to_keep=keep)
    logits = out.logits  # [B, 1, V]; [B, K, V] for a model without an output-embedding module to hook
    if logits.shape[1] != 1:
        logits = logits[torch.arange(B, device=device), columns].unsqueeze(1)
    first = _answer_logprobs(logits[:, 0], list(range(B)), [(b, cont[0]) for b, _, _, cont in firsts])
    processed = sum(sizes)
    if not later:
        for (_, e, j, _), value in zip(firsts, first.tolist()):
            logprob[e][j] = value
        return processed

    # second pass: continuation tokens 2..n, each candidate reading its own query's cache
    rows = torch.tensor([b for b, *_ in later]).to(device)
    keys, values = cache_tensors(output_cache(out))
    cache = make_cache(model, [k.index_select(0, rows) for k in keys], [v.index_select(0, rows) for v in values])
    conts = [cont for *_, cont in later]
    cids, cmask = _pad([c[:-1] for c in conts], pad_id, device)
    N, C = cids.shape
    mask2 = torch.cat([mask.index_select(0, rows), cmask], dim=1)
    positions2 = offset + lengths.index_select(0, rows)[:, None] + torch.arange(C, device=device)[None]
    logits = run(model, input_ids=cids, attention_mask=mask2, position_ids=positions2, cache=cache,
                 use_cache=True).logits
    # only the positions that predict an answer token are normalised (not the padding up to C)
    flat = [n * C + t for n, cont in enumerate(conts) for t in range(len(cont) - 1)]
    tokens = [tok for cont in conts for tok in cont[1:]]
    per_token = _answer_logprobs(logits.reshape(N * C, -1), flat, [(i, t) for i, t in enumerate(tokens)])
    # summed per candidate in fp32 on the device, in token order, as the one-candidate-at-a-time loop did
    table = torch.zeros(N * C, dtype=torch.float32, device=device)
    table[torch.tensor(flat).to(device)] = per_token
    rest = table.reshape(N, C).sum(dim=1)
    values = torch.cat([first, rest]).tolist()
    for (_, e, j, _), value in zip(firsts, values):
        logprob[e][j] = value
    for (_, e, j, _), value in zip(later, values[len(firsts):]):
        logprob[e][j] += value
    return processed + sum(len(c) - 1 for c in conts)
