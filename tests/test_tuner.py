"""The tuner's update against the paper's equations computed by hand from raw forward passes."""
import math

import pytest
import torch
from transformers import DynamicCache

import ift
from ift.cache import output_cache, run
from tiny import ARCHS


def raw_reread(lm, ids, keys, values, start):
    """Present K/V of the demonstrations re-read after a cache holding (keys, values), positions from `start`."""
    L = ids.shape[1]
    cache = DynamicCache(config=lm.model.config)
    for i, (k, v) in enumerate(zip(keys, values)):
        cache.update(k.clone(), v.clone(), i)
    with torch.no_grad():
        out = run(lm.model, cache=cache, input_ids=ids, attention_mask=torch.ones(1, 2 * L, dtype=torch.long),
                  position_ids=torch.arange(start, start + L)[None], use_cache=True)
    return ([layer.keys[:, :, L:] for layer in output_cache(out).layers],
            [layer.values[:, :, L:] for layer in output_cache(out).layers])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_three_steps_match_hand_computed_momentum_updates(arch, tiny_lm, demos):
    lm = tiny_lm(arch)
    eta, beta = 0.3, 0.6
    ids = lm.tokenizer(demos, return_tensors="pt").input_ids
    L = ids.shape[1]
    with torch.no_grad():
        first = output_cache(lm.model(input_ids=ids, use_cache=True))
    K1 = [layer.keys for layer in first.layers]
    V1 = [layer.values for layer in first.layers]
    # step 2: M = G (first update), K̃2 = K̃1 + ηG
    K2p, V2p = raw_reread(lm, ids, K1, V1, start=L)
    GK2 = [a - b for a, b in zip(K2p, K1)]
    GV2 = [a - b for a, b in zip(V2p, V1)]
    K2 = [k + eta * g for k, g in zip(K1, GK2)]
    V2 = [v + eta * g for v, g in zip(V1, GV2)]
    # step 3: M = G + βM, K̃3 = K̃2 + ηM
    K3p, V3p = raw_reread(lm, ids, K2, V2, start=L)
    MK = [(a - b) + beta * m for a, b, m in zip(K3p, K2, GK2)]
    MV = [(a - b) + beta * m for a, b, m in zip(V3p, V2, GV2)]
    K3 = [k + eta * m for k, m in zip(K2, MK)]
    V3 = [v + eta * m for v, m in zip(V2, MV)]

    steps = list(ift.ForwardTuner(lm, eta=eta, beta=beta).steps(demos, T=3))
    assert [p.step for p in steps] == [1, 2, 3]
    for got, want in ((steps[0].keys, K1), (steps[1].keys, K2), (steps[1].values, V2),
                      (steps[2].keys, K3), (steps[2].values, V3)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert steps[0].grad_norms_k == [0.0, 0.0]
    assert steps[1].grad_norms_k == pytest.approx([torch.linalg.vector_norm(g).item() for g in GK2], rel=1e-5)
    assert steps[2].grad_norms_v == pytest.approx(
        [torch.linalg.vector_norm(a - b).item() for a, b in zip(V3p, V2)], rel=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_eta_one_beta_zero_takes_the_present_keys(arch, tiny_lm, demos):
    lm = tiny_lm(arch)
    one, two = ift.ForwardTuner(lm, eta=1.0, beta=0.0).steps(demos, T=2)
    ids = lm.tokenizer(demos, return_tensors="pt").input_ids
    present_k, present_v = raw_reread(lm, ids, one.keys, one.values, start=ids.shape[1])
    for got, want in zip(two.keys + two.values, present_k + present_v):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_position_modes_differ_exactly_where_positions_enter(arch, tiny_lm, demos):
    """Layer 0 sees only each token and its position: re-read at the same positions ('aligned') its K/V
    reproduce the cache exactly (G = 0); shifted by L ('continue') they do not. Deeper layers see the
    cached context, so both modes move them."""
    lm = tiny_lm(arch)
    aligned = list(ift.ForwardTuner(lm, position_mode="aligned").steps(demos, T=2))[-1]
    shifted = list(ift.ForwardTuner(lm, position_mode="continue").steps(demos, T=2))[-1]
    assert aligned.grad_norms_k[0] == 0.0 and aligned.grad_norms_v[0] == 0.0
    assert shifted.grad_norms_k[0] > 0 or arch == "gpt_neox" and shifted.grad_norms_v[0] > 0
    assert aligned.grad_norms_k[1] > 0 and shifted.grad_norms_k[1] > 0
    assert aligned.grad_norms_k[1] != pytest.approx(shifted.grad_norms_k[1])


def test_aligned_mode_refused_for_alibi(tiny_lm):
    with pytest.raises(ValueError, match="position_mode='aligned' is impossible for bloom"):
        ift.ForwardTuner(tiny_lm("bloom"), position_mode="aligned")


@pytest.mark.parametrize("arch, mode", [("llama", "aligned"), ("gpt2", "aligned"), ("bloom", "continue")])
def test_auto_mode_is_aligned_unless_the_model_has_no_absolute_positions(arch, mode, tiny_lm, demos):
    lm = tiny_lm(arch)
    auto = ift.ForwardTuner(lm, eta=0.1, position_mode="auto")
    assert auto.position_mode == mode
    got = list(auto.steps(demos, T=2))[-1]
    want = list(ift.ForwardTuner(lm, eta=0.1, position_mode=mode).steps(demos, T=2))[-1]
    assert got.meta["position_mode"] == mode
    for a, b in zip(got.keys + got.values, want.keys + want.values):
        assert torch.equal(a, b)


def test_resume_continues_exactly(tiny_lm, demos):
    lm = tiny_lm("llama")
    tuner = ift.ForwardTuner(lm, eta=0.2, beta=0.9)
    straight = list(tuner.steps(demos, T=4))
    resumed = list(tuner.steps(demos, T=4, resume_from=straight[1]))
    assert [p.step for p in resumed] == [3, 4]
    for g, w in zip(resumed[-1].keys, straight[-1].keys):
        torch.testing.assert_close(g, w)


def test_non_finite_update_stops_with_a_reason(tiny_lm, demos):
    lm = tiny_lm("llama")
    tuner = ift.ForwardTuner(lm, eta=0.1)
    first = next(tuner.steps(demos, T=1))
    first.keys[1] = torch.full_like(first.keys[1], float("inf"))
    out = list(tuner.steps(demos, T=5, resume_from=first))
    assert len(out) == 1
    assert out[0].diverged.startswith("non-finite") and "step 2" in out[0].diverged
    assert out[0].step == 1  # the last good state, not the garbage


def test_sliding_window_too_short_is_refused(tiny_lm, demos):
    lm = tiny_lm("gemma3", sliding_window=16)
    with pytest.raises(ValueError, match="sliding-window layers keep only 15"):
        list(ift.ForwardTuner(lm).steps(demos, T=2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta=0.0), "eta must be a finite number > 0, got 0.0"), (dict(eta=-1), "eta must be a finite number > 0"),
    (dict(eta=float("inf")), "eta must be a finite number > 0, got inf"),
    (dict(eta=float("nan")), "eta must be a finite number > 0, got nan"),
    (dict(beta=1.0), r"beta must be a finite number in \[0, 1\)"),
    (dict(beta=-0.1), r"beta must be a finite number in \[0, 1\)"),
    (dict(beta=float("nan")), r"beta must be a finite number in \[0, 1\), got nan"),
    (dict(position_mode="sideways"), "position_mode='sideways' is unknown; choose one of"),
])
def test_bad_hyperparameters(tiny_lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ift.ForwardTuner(tiny_lm("llama"), **kwargs)


def test_bad_steps_and_empty_demonstrations(tiny_lm, demos):
    tuner = ift.ForwardTuner(tiny_lm("llama"))
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        list(tuner.steps(demos, T=0))
    with pytest.raises(ValueError, match="demonstrations are empty"):
        list(tuner.steps("  \n", T=2))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_huge_eta_diverges_and_never_reports_non_finite_grad_norms(arch, tiny_lm, demos):
    """eta=1e6 used to run all T steps with grad norms of inf and count as finished: the keys stayed
    finite while their grad norm overflowed."""
    out = list(ift.ForwardTuner(tiny_lm(arch), eta=1e6, beta=0.9).steps(demos, T=10))
    last = out[-1]
    assert last.diverged and "step" in last.diverged and "lower eta" in last.diverged
    assert last.step < 10 and last.step == out[-2].step  # the last finite state, yielded once more
    for p in out:
        assert all(math.isfinite(x) for x in p.grad_norms_k + p.grad_norms_v)
        assert all(torch.isfinite(t).all() for t in p.keys + p.values)
    assert last.grad_norms_k == out[-2].grad_norms_k


def test_keys_beyond_the_models_dtype_diverge(tiny_lm, demos):
    """An fp32 key of 1e5 is inf once cast to an fp16 model's cache: that counts as diverged too."""
    lm = tiny_lm("llama")
    lm.model.half()
    out = list(ift.ForwardTuner(lm, eta=1e4, beta=0.9).steps(demos, T=10))
    assert out[-1].diverged and "exceed the range of torch.float16" in out[-1].diverged
    for p in out:
        assert all(t.abs().max() <= torch.finfo(torch.float16).max for t in p.keys + p.values)


def test_resume_needs_momentum(tiny_lm, demos):
    tuner = ift.ForwardTuner(tiny_lm("llama"), eta=0.1)
    second = list(tuner.steps(demos, T=2))[-1]
    second.momentum_k = second.momentum_v = None
    with pytest.raises(ValueError, match=r"resume_from \(step 2\) has no momentum"):
        list(tuner.steps(demos, T=3, resume_from=second))


def test_continue_mode_needs_twice_the_demonstrations_in_positions(tiny_lm, demos, examples):
    """36 demonstration tokens: the re-read sits at positions 36..71, past a 70-position Llama, which
    would otherwise run on silently with positions it never saw."""
    lm = tiny_lm("llama", max_position_embeddings=70)
    message = (r"tuning \(T=2, position_mode='continue'\) re-reads the demonstrations at positions 36\.\.71, so it "
               r"needs 72, but the model has 70 positions \(config max_position_embeddings=70\)\. Use fewer or "
               r"shorter demonstrations.*position_mode='aligned'")
    with pytest.raises(ValueError, match=message):
        ift.check_lengths(lm, demos, examples, T=2)
    with pytest.raises(ValueError, match=message):
        list(ift.ForwardTuner(lm).steps(demos, T=2))
    lengths = ift.check_lengths(lm, demos, examples, T=2, position_mode="aligned")
    assert lengths["demo_tokens"] == 36 and lengths["scoring_positions"] == 36 + 20 + 9
    assert lengths["max_positions"] == 70
    assert len(list(ift.ForwardTuner(lm, position_mode="aligned").steps(demos, T=2))) == 2
    assert ift.check_lengths(lm, demos, examples, T=1)["tuning_positions"] == 36


def test_alibi_models_have_no_position_limit(tiny_lm, demos, examples):
    assert ift.check_lengths(tiny_lm("bloom"), demos * 20, examples, T=3)["max_positions"] is None
