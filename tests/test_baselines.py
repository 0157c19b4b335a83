"""Baselines beside IFT: the ICL prefix, repeated demonstrations, prefix lengths, compute accounting."""
import pytest
import torch

import ift
from ift.baselines import (
    StepCost,
    gradient_step_costs,
    icl_cost,
    icl_prefix,
    ift_step_costs,
    prefix_tokens,
    repeat_demonstrations,
)


def sums(scores):
    return [s.sum_logprobs for s in scores]


def assert_scores_close(a, b, **tol):
    for x, y in zip(sums(a), sums(b)):
        torch.testing.assert_close(torch.tensor(x), torch.tensor(y), **tol)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_icl_prefix_scores_like_concatenated_demonstrations(arch, tiny_lm, demos, examples):
    lm = tiny_lm(arch, seed=3)
    prefix = icl_prefix(lm, demos)
    assert prefix.step == 1 and prefix.meta["method"] == "icl" and prefix.meta["demo_text"] == demos
    via_prefix = ift.score_examples(lm, examples, prefix=prefix)
    via_text = ift.score_examples(lm, examples, demonstrations=demos)
    assert_scores_close(via_prefix, via_text, atol=1e-4, rtol=1e-4)
    # and it is not trivially so: without the demonstrations the scores differ
    zero = ift.score_examples(lm, examples)
    assert any(abs(a - b) > 1e-3 for x, y in zip(sums(zero), sums(via_text)) for a, b in zip(x, y))


def test_icl_prefix_survives_save_and_load(tiny_lm, demos, examples, tmp_path):
    lm = tiny_lm("llama")
    prefix = icl_prefix(lm, demos)
    loaded = ift.TunedPrefix.load(prefix.save(tmp_path / "icl.safetensors"), lm)
    assert sums(ift.score_examples(lm, examples, prefix=loaded)) == sums(ift.score_examples(lm, examples, prefix=prefix))


def test_repeat_once_is_icl_exactly(tiny_lm, demos, examples):
    lm = tiny_lm("llama", seed=1)
    assert repeat_demonstrations(demos, 1) == demos
    once = ift.score_examples(lm, examples, demonstrations=repeat_demonstrations(demos, 1))
    assert sums(once) == sums(ift.score_examples(lm, examples, demonstrations=demos))
    twice = ift.score_examples(lm, examples, demonstrations=repeat_demonstrations(demos, 2))
    assert sums(twice) != sums(once)


def test_repeat_copies_follow_each_other_like_demonstrations(demos):
    assert repeat_demonstrations(demos, 3) == demos + demos + demos
    assert repeat_demonstrations("Q: a\nA: b", 2) == "Q: a\nA: b\n\nQ: a\nA: b"
    assert repeat_demonstrations("Q: a\nA: b", 1) == "Q: a\nA: b"


def test_prefix_tokens_counts_what_the_model_reads(tiny_lm, demos):
    lm = tiny_lm("llama")
    L = prefix_tokens(lm, demos)
    assert L == len(lm.tokenizer(demos, add_special_tokens=True).input_ids) == icl_prefix(lm, demos).length
    # one BOS for the whole text: r copies are r·(L − 1) + 1 tokens with this tokenizer
    assert lm.tokenizer(demos).input_ids[0] == lm.tokenizer.bos_token_id
    assert prefix_tokens(lm, repeat_demonstrations(demos, 3)) == 3 * (L - 1) + 1
    assert prefix_tokens(lm, "") == 1  # zero-shot: BOS alone


def test_ift_step_costs():
    costs = ift_step_costs(10, 3)
    assert [c.step for c in costs] == [1, 2, 3]
    assert [c.tokens for c in costs] == [10, 10, 10]
    assert [c.tune_tokens for c in costs] == [10, 20, 30]
    assert [c.context for c in costs] == [10, 20, 20]
    assert [c.attended for c in costs] == [55, 155, 155]
    assert [c.tune_attended for c in costs] == [55, 210, 365]
    assert all(c.backward_tokens == 0 and c.tune_backward_tokens == 0 for c in costs)
    assert icl_cost(10) == costs[0]
    assert costs[1].to_dict()["tune_tokens"] == 20


def test_gradient_step_costs():
    costs = gradient_step_costs(10, [3, 4], 3)
    assert costs[0] == icl_cost(10)
    assert costs[1] == StepCost(step=2, tokens=7, context=14, attended=3 * 10 + 6 + 4 * 10 + 10, tune_tokens=17,
                                tune_attended=55 + 86, backward_tokens=7, tune_backward_tokens=7)
    assert costs[2].tune_tokens == 24 and costs[2].tune_backward_tokens == 14


@pytest.mark.parametrize("bad, name", [
    (lambda: repeat_demonstrations("a\n\n", 0), "r "),
    (lambda: repeat_demonstrations("a\n\n", -2), "r "),
    (lambda: repeat_demonstrations("a\n\n", 1.5), "r "),
    (lambda: repeat_demonstrations("a\n\n", True), "r "),
    (lambda: repeat_demonstrations("", 2), "demo_text"),
    (lambda: ift_step_costs(0, 2), "L "),
    (lambda: ift_step_costs(5, 0), "T "),
    (lambda: gradient_step_costs(5, [], 2), "row_lengths"),
    (lambda: gradient_step_costs(5, [2], 0), "T "),
])
def test_bad_arguments_name_the_argument(bad, name):
    with pytest.raises(ValueError, match=name):
        bad()


def test_icl_prefix_refuses_empty_demonstrations(tiny_lm):
    with pytest.raises(ValueError, match="demo_text"):
        icl_prefix(tiny_lm("llama"), "  ")
