"""The true-gradient counterpart of IFT: leave-one-out objective, Adam on the K/V cache, cosine with IFT's G."""
import math

import pytest
import torch

import ift
from ift.baselines import icl_prefix
from ift.gradient import (
    GradientTuner,
    LeaveOneOut,
    demonstration_text,
    layer_cosines,
    pseudo_gradient_cosine,
)
from tiny import make_tiny_model, make_tokenizer

E = ift.Example
DEMOS = [
    E.shared("Review: a gripping and warm film\nSentiment:", [" positive", " negative"], 0, 10),
    E.shared("Review: dull and far too long\nSentiment:", [" positive", " negative"], 1, 11),
    E.shared("Question: Who wrote the novel?\nType:", [" Person", " Number", " Location of the event"], 2, 12),
]


def kv(prefix, dtype=torch.float32):
    return [k.to(dtype) for k in prefix.keys], [v.to(dtype) for v in prefix.values]


def test_demonstration_text_is_the_tasks_format():
    assert demonstration_text(DEMOS[:2]) == ("Review: a gripping and warm film\nSentiment: positive\n\n"
                                             "Review: dull and far too long\nSentiment: negative\n\n")


@pytest.mark.parametrize("bos", [True, False])
def test_spans_cover_each_demonstration_and_nothing_else(bos):
    lm = ift.from_objects(make_tiny_model("llama"), make_tokenizer(add_bos=bos))
    obj = LeaveOneOut(lm, DEMOS)
    tok = lm.tokenizer
    for (a, b), ex in zip(obj.spans, DEMOS):
        assert tok.decode(obj.token_ids[a:b]) == ex.demonstration
    covered = {j for a, b in obj.spans for j in range(a, b)}
    outside = [tok.decode([obj.token_ids[j]]) for j in range(obj.L) if j not in covered]
    assert (outside[0] == tok.bos_token) == bos
    assert "".join(outside[1:] if bos else outside) == "\n\n" * len(DEMOS)
    assert obj.row_lengths == [len(tok(ex.contexts[ex.gold]).input_ids) - bos + len(
        tok(ex.contexts[ex.gold] + ex.continuations[ex.gold]).input_ids) - len(tok(ex.contexts[ex.gold]).input_ids) - 1
        for ex in DEMOS]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loss_equals_one_plain_pass_with_the_demonstration_hidden_from_its_query(arch, tiny_lm):
    """Row i's batched, cached loss equals −log p(answer_i) from one plain forward pass over the demonstrations
    followed by demonstration i's query and answer, under a 4-D mask: causal, except that the query and answer
    tokens do not see demonstration i (the demonstrations still see each other, as in the ICL cache)."""
    lm = tiny_lm(arch, seed=2)
    obj = LeaveOneOut(lm, DEMOS)
    with torch.no_grad():
        losses = obj.losses(*kv(icl_prefix(lm, obj.demo_text)))
    for i, (ex, (a, b)) in enumerate(zip(DEMOS, obj.spans)):
        context, answer = ex.contexts[ex.gold], ex.continuations[ex.gold]
        ctx = lm.tokenizer(context, add_special_tokens=False).input_ids
        ans = lm.tokenizer(context + answer, add_special_tokens=False).input_ids[len(ctx):]
        full = torch.tensor([obj.token_ids + ctx + ans[:-1]])
        S = full.shape[1]
        mask = torch.tril(torch.ones(S, S, dtype=torch.bool))
        mask[obj.L:, a:b] = False
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=full, attention_mask=mask[None, None]).logits[0].float(), -1)
        start = obj.L + len(ctx) - 1
        want = -sum(lp[start + k, t] for k, t in enumerate(ans))
        torch.testing.assert_close(losses[i], want, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_step_one_is_icl_exactly(arch, tiny_lm, examples):
    lm = tiny_lm(arch, seed=4)
    first = next(iter(GradientTuner(lm, lr=0.1).steps(DEMOS, 3)))
    icl = icl_prefix(lm, demonstration_text(DEMOS))
    assert first.step == 1 and first.token_ids == icl.token_ids
    for a, b in zip(first.keys + first.values, icl.keys + icl.values):
        assert torch.equal(a, b)
    assert sum(first.grad_norms_k) == 0 and sum(first.grad_norms_v) == 0
    assert (ift.score_examples(lm, examples, prefix=first)[0].sum_logprobs
            == ift.score_examples(lm, examples, prefix=icl)[0].sum_logprobs)
    text = ift.score_examples(lm, examples, demonstrations=demonstration_text(DEMOS))
    for x, y in zip(ift.score_examples(lm, examples, prefix=first), text):
        assert x.sum_logprobs == pytest.approx(y.sum_logprobs, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])  # Llama's RMSNorm computes in fp32 even in an fp64 model
def test_gradient_matches_central_differences_in_float64(arch):
    lm = ift.from_objects(make_tiny_model(arch, seed=5).double(), make_tokenizer())
    obj = LeaveOneOut(lm, DEMOS)
    keys, values = kv(icl_prefix(lm, obj.demo_text), torch.float64)
    assert obj.loss(keys, values).dtype == torch.float64
    _, gk, gv = obj.gradient(keys, values)
    gen = torch.Generator().manual_seed(0)
    eps = 1e-4
    checked = 0
    for which, tensors, grads in (("k", keys, gk), ("v", values, gv)):
        for layer in range(len(tensors)):
            shape = tensors[layer].shape
            for _ in range(3):
                idx = tuple(int(torch.randint(n, (1,), generator=gen)) for n in shape)
                plus = [t.clone() for t in tensors]
                minus = [t.clone() for t in tensors]
                plus[layer][idx] += eps
                minus[layer][idx] -= eps
                args = (lambda ts: (ts, values)) if which == "k" else (lambda ts: (keys, ts))
                with torch.no_grad():
                    fd = (obj.loss(*args(plus)) - obj.loss(*args(minus))).item() / (2 * eps)
                assert grads[layer][idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-10), (which, layer, idx)
                checked += abs(fd) > 1e-7
    assert checked >= 6  # the chosen coordinates mostly carry gradient


def test_a_demonstrations_own_positions_cannot_change_its_own_loss(tiny_lm):
    lm = tiny_lm("llama", seed=6)
    obj = LeaveOneOut(lm, DEMOS)
    keys, values = kv(icl_prefix(lm, obj.demo_text))
    with torch.no_grad():
        base = obj.losses(keys, values)
    gen = torch.Generator().manual_seed(1)
    for i, (a, b) in enumerate(obj.spans):
        ks, vs = [k.clone() for k in keys], [v.clone() for v in values]
        for t in ks + vs:
            t[:, :, a:b] += 3 * torch.randn(t[:, :, a:b].shape, generator=gen)
        with torch.no_grad():
            moved = obj.losses(ks, vs)
        torch.testing.assert_close(moved[i], base[i], atol=1e-6, rtol=1e-6)
        others = [j for j in range(len(DEMOS)) if j != i]
        assert all(abs(moved[j] - base[j]) > 1e-4 for j in others)
    # and its gradient there is exactly zero, while another demonstration's positions get some
    (a, b), (c, d) = obj.spans[0], obj.spans[1]
    leaves = [t.clone().requires_grad_(True) for t in keys + values]
    obj.losses(leaves[: len(keys)], leaves[len(keys):])[0].backward()
    assert all(torch.count_nonzero(t.grad[:, :, a:b]) == 0 for t in leaves)
    assert any(torch.count_nonzero(t.grad[:, :, c:d]) > 0 for t in leaves)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_adam_steps_lower_the_leave_one_out_loss(arch, tiny_lm):
    lm = tiny_lm(arch, seed=7)
    steps = list(GradientTuner(lm, lr=0.05).steps(DEMOS, 5))
    assert [p.step for p in steps] == [1, 2, 3, 4, 5]
    loss = [p.meta["loss"] for p in steps]
    assert all(b < a for a, b in zip(loss, loss[1:])), loss
    assert not any(p.diverged for p in steps)
    p = steps[2]
    assert p.meta["method"] == "grad" and p.meta["lr"] == 0.05 and len(p.meta["losses"]) == len(DEMOS)
    assert p.meta["loss"] == pytest.approx(sum(p.meta["losses"]) / len(DEMOS))
    assert len(p.grad_norms_k) == len(p.grad_norms_v) == 2 and min(p.grad_norms_k + p.grad_norms_v) > 0
    # the reported loss is the loss of the yielded prefix, and the prefix has moved
    obj = LeaveOneOut(lm, DEMOS)
    with torch.no_grad():
        assert obj.loss(p.keys, p.values).item() == pytest.approx(p.meta["loss"], rel=1e-5)
    assert not torch.equal(p.keys[0], steps[0].keys[0])
    L, Q = obj.L, sum(obj.row_lengths)
    assert [s.meta["tune_tokens"] for s in steps] == [L, L + Q, L + 2 * Q, L + 3 * Q, L + 4 * Q]
    assert [s.meta["tune_backward_tokens"] for s in steps] == [0, Q, 2 * Q, 3 * Q, 4 * Q]


def test_grad_norms_are_those_of_the_true_gradient_that_made_the_step(tiny_lm):
    lm = tiny_lm("llama", seed=8)
    first, second = GradientTuner(lm, lr=0.05).steps(DEMOS, 2)
    _, gk, gv = LeaveOneOut(lm, DEMOS).gradient(first.keys, first.values)
    assert second.grad_norms_k == pytest.approx([torch.linalg.vector_norm(g).item() for g in gk], rel=1e-5)
    assert second.grad_norms_v == pytest.approx([torch.linalg.vector_norm(g).item() for g in gv], rel=1e-5)
    # Adam's first step moves every coordinate with a nonzero gradient by about lr against its sign
    delta = second.keys[1] - first.keys[1]
    moved = gk[1].abs() > 1e-6
    torch.testing.assert_close(delta[moved], -0.05 * torch.sign(gk[1][moved]), atol=1e-3, rtol=1e-2)


def test_tuning_leaves_the_model_untouched(tiny_lm):
    lm = tiny_lm("llama", seed=9)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    list(GradientTuner(lm, lr=0.1).steps(DEMOS, 4))
    pseudo_gradient_cosine(lm, DEMOS)
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())
    # a model someone left trainable: flags restored, still no weight gradient
    lm.model.requires_grad_(True)
    list(GradientTuner(lm, lr=0.1).steps(DEMOS, 2))
    assert all(p.grad is None and p.requires_grad for p in lm.model.parameters())


def test_tuned_prefix_saves_loads_and_scores(tiny_lm, examples, tmp_path):
    lm = tiny_lm("llama")
    last = list(GradientTuner(lm, lr=0.1).steps(DEMOS, 3))[-1]
    loaded = ift.TunedPrefix.load(last.save(tmp_path / "grad.safetensors"), lm)
    assert loaded.meta["loss"] == last.meta["loss"] and loaded.step == 3
    assert ([s.sum_logprobs for s in ift.score_examples(lm, examples, prefix=loaded)]
            == [s.sum_logprobs for s in ift.score_examples(lm, examples, prefix=last)])


def test_divergence_stops_with_the_last_good_prefix(tiny_lm):
    lm = tiny_lm("llama")
    steps = list(GradientTuner(lm, lr=1e30).steps(DEMOS, 5))
    last = steps[-1]
    assert last.diverged and last.step == len(steps) - 1 < 5  # the last good prefix, yielded again
    assert not any(p.diverged for p in steps[:-1])
    assert all(torch.isfinite(t).all() for t in last.keys + last.values) and math.isfinite(last.meta["loss"])


def test_layer_cosines():
    x = [torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)]
    assert layer_cosines(x, x) == pytest.approx([1.0, 1.0])
    assert layer_cosines(x, [-t for t in x]) == pytest.approx([-1.0, -1.0])
    y = [x[0], x[0].flip(-1)]
    assert layer_cosines(x, y)[1] < 0.99
    assert math.isnan(layer_cosines([torch.zeros(3)], [torch.ones(3)])[0])


@pytest.mark.parametrize("mode", ["continue", "aligned"])
def test_pseudo_gradient_cosine_against_a_separate_computation(mode, tiny_lm):
    lm = tiny_lm("llama", seed=10)
    got = pseudo_gradient_cosine(lm, DEMOS, position_mode=mode)
    n = lm.model.config.num_hidden_layers
    assert len(got["k"]) == len(got["v"]) == n
    assert all(math.isnan(c) or -1 <= c <= 1 for c in got["k"] + got["v"])
    # G from a tuner with another eta, rescaled; the gradient from the objective directly
    a, b = ift.ForwardTuner(lm, eta=0.5, beta=0.5, position_mode=mode).steps(demonstration_text(DEMOS), 2)
    obj = LeaveOneOut(lm, DEMOS)
    loss, gk, gv = obj.gradient(a.keys, a.values)
    want_k = layer_cosines([(y - x) / 0.5 for x, y in zip(a.keys, b.keys)], [-g for g in gk])
    want_v = layer_cosines([(y - x) / 0.5 for x, y in zip(a.values, b.values)], [-g for g in gv])
    assert got["k"] == pytest.approx(want_k, abs=1e-4, nan_ok=True)
    assert got["v"] == pytest.approx(want_v, abs=1e-4, nan_ok=True)
    assert got["loss"] == pytest.approx(loss.mean().item())
    assert not all(math.isnan(c) for c in got["k"])


@pytest.mark.parametrize("bad, name", [
    (lambda lm: GradientTuner(lm, lr=0), "lr"),
    (lambda lm: GradientTuner(lm, lr=-1e-3), "lr"),
    (lambda lm: GradientTuner(lm, lr=float("nan")), "lr"),
    (lambda lm: GradientTuner(lm, betas=(0.9, 1.0)), "betas"),
    (lambda lm: list(GradientTuner(lm).steps(DEMOS, 0)), "T "),
    (lambda lm: list(GradientTuner(lm).steps([], 2)), "demo_examples"),
    (lambda lm: list(GradientTuner(lm).steps(DEMOS[:1], 2)), "demo_examples"),
    (lambda lm: list(GradientTuner(lm).steps([DEMOS[0], E.shared("Review: ok\nSentiment:", [" a", " b"])], 2)),
     r"demo_examples\[1\].*unlabelled"),
    (lambda lm: list(GradientTuner(lm).steps("Review: x\nSentiment: positive\n\n", 2)), "demo_examples"),
    (lambda lm: pseudo_gradient_cosine(lm, []), "demo_examples"),
])
def test_bad_arguments_name_the_argument(bad, name, tiny_lm):
    with pytest.raises(ValueError, match=name):
        bad(tiny_lm("llama"))
