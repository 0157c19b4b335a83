"""The scorer against the plainest possible computation, on tiny random models of every family."""
import pytest
import torch

import ift
from tiny import ARCHS


def naive_scores(lm, examples, demonstrations=""):
    """One full forward pass per candidate over [BOS/demos ‖ context ‖ continuation], no batching, no sharing."""
    tok = lm.tokenizer
    base = tok(demonstrations, add_special_tokens=True).input_ids
    out = []
    for ex in examples:
        sums = []
        for ctx, cont in zip(ex.contexts, ex.continuations):
            ctx_ids = tok(ctx, add_special_tokens=False).input_ids
            full = tok(ctx + cont, add_special_tokens=False).input_ids
            cont_ids = full[len(ctx_ids):] if full[: len(ctx_ids)] == ctx_ids else tok(cont, add_special_tokens=False).input_ids
            ids = torch.tensor([base + ctx_ids + cont_ids])
            with torch.no_grad():
                lp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
            start = len(base) + len(ctx_ids)
            sums.append(sum(lp[start - 1 + i, t].item() for i, t in enumerate(cont_ids)))
        out.append(sums)
    return out


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.mark.parametrize("arch", ARCHS)
def test_step1_prefix_equals_concatenated_icl(arch, tiny_lm, demos, examples):
    lm = tiny_lm(arch)
    prefix = next(ift.ForwardTuner(lm).steps(demos, T=1))
    with_prefix = ift.score_examples(lm, examples, prefix=prefix, batch_size=4)
    concatenated = naive_scores(lm, examples, demos)
    assert max_diff([s.sum_logprobs for s in with_prefix], concatenated) < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_query_equals_naive_per_candidate(arch, tiny_lm, examples):
    lm = tiny_lm(arch)
    zero_shot = ift.score_examples(lm, examples, batch_size=8)
    assert max_diff([s.sum_logprobs for s in zero_shot], naive_scores(lm, examples)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "opt", "bloom", "gpt2"])
def test_batch_equals_single_runs(arch, tiny_lm, demos, examples):
    lm = tiny_lm(arch)
    prefix = list(ift.ForwardTuner(lm, eta=0.1).steps(demos, T=3))[-1]
    batched = ift.score_examples(lm, examples, prefix=prefix, batch_size=len(examples))
    singles = [ift.score_examples(lm, [ex], prefix=prefix, batch_size=1)[0] for ex in examples]
    assert max_diff([s.sum_logprobs for s in batched], [s.sum_logprobs for s in singles]) < 1e-4
    icl_batched = ift.score_examples(lm, examples, demonstrations=demos, batch_size=3)
    icl_singles = [ift.score_examples(lm, [ex], demonstrations=demos)[0] for ex in examples]
    assert max_diff([s.sum_logprobs for s in icl_batched], [s.sum_logprobs for s in icl_singles]) < 1e-4


def test_tuned_prefix_changes_scores(tiny_lm, demos, examples):
    lm = tiny_lm("llama")
    steps = list(ift.ForwardTuner(lm, eta=0.5).steps(demos, T=3))
    first, last = (ift.score_examples(lm, examples, prefix=p) for p in (steps[0], steps[-1]))
    assert max_diff([s.sum_logprobs for s in first], [s.sum_logprobs for s in last]) > 1e-3


def test_length_normalised_score_and_predictions(tiny_lm, examples):
    lm = tiny_lm("llama")
    for s in ift.score_examples(lm, examples):
        assert s.mean_logprobs == pytest.approx([t / n for t, n in zip(s.sum_logprobs, s.n_tokens)])
        assert s.sum_logprobs[s.pred] == max(s.sum_logprobs)
        assert s.mean_logprobs[s.pred_norm] == max(s.mean_logprobs)
    lengths = {n for s in ift.score_examples(lm, examples) for n in s.n_tokens}
    assert 1 in lengths and max(lengths) > 1  # both scoring paths (query pass only / second pass) ran


def test_accuracy_counts_labelled_examples_only():
    S = ift.ExampleScore
    scores = [S([0.0, -1.0], [-0.2, -0.1], [1, 10], 0), S([0.0, -1.0], [-1.0, -0.05], [1, 20], 1),
              S([0.0, -1.0], [0.0, -1.0], [1, 1], -1)]
    assert ift.accuracy(scores) == (0.5, 0.5)


def test_stats_count_processed_tokens(tiny_lm, demos, examples):
    lm = tiny_lm("llama")
    prefix = next(ift.ForwardTuner(lm).steps(demos, T=1))
    tuned, icl = {}, {}
    ift.score_examples(lm, examples, prefix=prefix, stats=tuned)
    ift.score_examples(lm, examples, demonstrations=demos, stats=icl)
    assert tuned["queries"] == icl["queries"] == len(examples)
    n_queries = 6  # five examples, one of them with two distinct contexts
    assert icl["tokens"] - tuned["tokens"] == n_queries * prefix.length


def test_scorer_errors(tiny_lm, demos):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="empty candidate list"):
        ift.Example.shared("Review: x\nSentiment:", [], 0)
    with pytest.raises(ValueError, match="candidate 1 .* no tokens"):
        ift.score_examples(lm, [ift.Example.shared("Review: x", [" good", ""], 0)])
    prefix = next(ift.ForwardTuner(lm).steps(demos, T=1))
    with pytest.raises(ValueError, match="either a tuned prefix or demonstrations"):
        ift.score_examples(lm, [ift.Example.shared("a", [" b"], 0)], prefix=prefix, demonstrations=demos)
    with pytest.raises(ValueError, match="batch_size"):
        ift.score_examples(lm, [ift.Example.shared("a", [" b"], 0)], batch_size=0)


def test_examples_past_the_models_positions_are_refused_before_any_work(tiny_lm, demos, examples):
    """GPT-2 with 60 positions: 36 demonstration tokens + 20 query + 9 answer tokens used to fail with an
    IndexError deep in the model."""
    lm = tiny_lm("gpt2", n_positions=60)
    message = (r"the demonstrations are 36 tokens and the longest example 20 query \+ 9 answer tokens "
               r"\(example 1\), so scoring needs 65 positions, but the model has 60 positions \(config "
               r"n_positions=60\)\. Use fewer or shorter demonstrations .*task\.demo_max_chars.*task\.eval_limit")
    with pytest.raises(ValueError, match=message):
        ift.score_examples(lm, examples, demonstrations=demos)
    prefix = next(ift.ForwardTuner(lm).steps(demos, T=1))  # 36 positions fit
    with pytest.raises(ValueError, match=message):
        ift.score_examples(lm, examples, prefix=prefix)
    with pytest.raises(ValueError, match=message):
        ift.check_lengths(lm, demos, examples)
    short = [ex for ex in examples if ex.index not in (1, 2)]  # both 29 tokens long
    assert len(ift.score_examples(lm, short, prefix=prefix)) == 3


def test_nan_scores_are_an_error_not_a_prediction(tiny_lm, demos, examples):
    lm = tiny_lm("gpt2")
    prefix = next(ift.ForwardTuner(lm).steps(demos, T=1))
    prefix.keys[0] = torch.full_like(prefix.keys[0], float("nan"))
    with pytest.raises(ValueError, match=r"5 of 5 examples score NaN .*prefix \(step 1\).*lower eta"):
        ift.score_examples(lm, examples, prefix=prefix)


def test_the_head_reads_one_position_per_row_and_scores_are_unchanged(tiny_lm, demos, examples):
    """Queries ending at different positions in one batch: the output head gets [B, 1, H] (not B x K rows of
    logits, of which B were used), and the scores equal those of the full logits at each row's own position."""
    lm = tiny_lm("llama")
    head = lm.model.get_output_embeddings()
    seen = []
    handle = head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        scores = ift.score_examples(lm, examples, demonstrations=demos, batch_size=len(examples))
    finally:
        handle.remove()
    assert seen[0][:2] == (len(examples), 1)
    tok = lm.tokenizer
    for ex, s in zip(examples, scores):  # the naive reference: one full forward per candidate
        for ctx, cont, got in zip(ex.contexts, ex.continuations, s.sum_logprobs):
            ctx_ids = tok(demos, add_special_tokens=True).input_ids + tok(ctx, add_special_tokens=False).input_ids
            cont_ids = ift.scorer.continuation_ids(tok, ctx, cont, tok(ctx, add_special_tokens=False).input_ids)
            ids = torch.tensor([ctx_ids + cont_ids])
            lp = torch.log_softmax(lm.model(ids).logits[0].float(), dim=-1)
            want = sum(lp[len(ctx_ids) - 1 + i, t].item() for i, t in enumerate(cont_ids))
            assert abs(got - want) < 1e-4


def test_a_model_without_a_head_to_hook_scores_the_same(tiny_lm, demos, examples, monkeypatch):
    """No output-embedding module to hook: the rows' own positions are picked from the full logits instead."""
    lm = tiny_lm("llama")
    hooked = ift.score_examples(lm, examples, demonstrations=demos, batch_size=len(examples))
    monkeypatch.setattr(lm.model, "get_output_embeddings", lambda: None)
    plain = ift.score_examples(lm, examples, demonstrations=demos, batch_size=len(examples))
    assert max_diff([s.sum_logprobs for s in hooked], [s.sum_logprobs for s in plain]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_answer_log_softmax_gives_the_same_bits(arch, tiny_lm, demos, examples, monkeypatch):
    """Log-probabilities are normalised only at the answer positions, a few rows at a time: any chunk size
    gives bit-identical scores, and they match one full forward per candidate."""
    import ift.scorer

    lm = tiny_lm(arch)
    prefix = list(ift.ForwardTuner(lm, eta=0.1).steps(demos, T=2))[-1]
    runs = {}
    for elements in (1 << 26, lm.model.config.vocab_size * 3, 1):  # everything at once, 3 rows, 1 row
        monkeypatch.setattr(ift.scorer, "LOGSOFTMAX_ELEMENTS", elements)
        runs[elements] = [[s.sum_logprobs for s in ift.score_examples(lm, examples, batch_size=b, **how)]
                          for b in (1, 4) for how in ({}, {"demonstrations": demos}, {"prefix": prefix})]
    whole, *chunked = runs.values()
    assert all(run == whole for run in chunked)
    assert max_diff(whole[0], naive_scores(lm, examples)) < 1e-4


def test_no_per_answer_host_sync_and_one_transfer_per_batch(tiny_lm, demos, examples, monkeypatch):
    """The batch loop never calls .item() (a device sync per answer on a GPU) and copies its scores to the
    host once per batch."""
    lm = tiny_lm("llama")
    expected = [s.sum_logprobs for s in ift.score_examples(lm, examples, demonstrations=demos, batch_size=2)]
    calls = {"item": 0, "tolist": 0}
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counted(name, real):
        def call(self, *a, **kw):
            calls[name] += 1
            return real(self, *a, **kw)
        return call

    monkeypatch.setattr(torch.Tensor, "item", counted("item", item))
    monkeypatch.setattr(torch.Tensor, "tolist", counted("tolist", tolist))
    got = [s.sum_logprobs for s in ift.score_examples(lm, examples, demonstrations=demos, batch_size=2)]
    assert got == expected
    assert calls == {"item": 0, "tolist": 3}  # 5 distinct queries, batches of 2


def test_examples_are_tokenised_once(tiny_lm, demos, examples, monkeypatch):
    """Scoring the same examples again (every tuning step, every RQ2 timing) reuses their tokens, so
    tokenisation stays out of later (timed) calls; other examples or demonstrations are tokenised anew."""
    lm = tiny_lm("llama")
    first = [s.sum_logprobs for s in ift.score_examples(lm, examples, demonstrations=demos)]
    tok_class, calls = type(lm.tokenizer), []
    real = tok_class.__call__
    monkeypatch.setattr(tok_class, "__call__", lambda self, *a, **kw: calls.append(a) or real(self, *a, **kw))
    again = [s.sum_logprobs for s in ift.score_examples(lm, examples, demonstrations=demos)]
    assert again == first
    assert calls == [(demos,)]  # only the demonstrations' ids, which pick the cached plan
    ift.score_examples(lm, examples[:2], demonstrations=demos)
    assert len(calls) > 2
