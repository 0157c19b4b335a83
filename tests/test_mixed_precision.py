"""quant=bf16_mixed: fp32 weights and tuning state, bf16 matrix products, fp32 output head."""
import pytest
import torch
from test_gradient import DEMOS as GRAD_DEMOS

import ift
from ift.cache import cache_tensors, output_cache, run
from ift.gradient import GradientTuner
from ift.models import autocast_model, check_options, load_model
from tiny import make_tiny_model, make_tokenizer, save_tiny_model


def mixed_pair(seed=3):
    full = ift.from_objects(make_tiny_model("llama", seed), make_tokenizer())
    mixed = ift.from_objects(autocast_model(make_tiny_model("llama", seed)), make_tokenizer())
    return full, mixed


def test_products_run_in_bf16_but_logits_and_weights_stay_fp32():
    _, lm = mixed_pair()
    out = run(lm.model, input_ids=torch.tensor([[0, 5, 9, 13]]), use_cache=True)
    keys, values = cache_tensors(output_cache(out))
    # really autocast: the value projection's output is bf16 (keys leave RoPE in fp32: cos/sin follow the
    # fp32 residual stream)
    assert values[0].dtype == values[1].dtype == torch.bfloat16
    assert out.logits.dtype == torch.float32  # the head is excluded: no bf16 ties between candidates
    assert all(p.dtype == torch.float32 for p in lm.model.parameters()) and lm.dtype == torch.float32


def test_scores_are_close_to_fp32_but_not_identical(demos, examples):
    full, mixed = mixed_pair()
    a = ift.score_examples(full, examples, demonstrations=demos)
    b = ift.score_examples(mixed, examples, demonstrations=demos)
    diffs = [abs(x - y) for s, t in zip(a, b) for x, y in zip(s.sum_logprobs, t.sum_logprobs)]
    assert 0 < max(diffs) < 0.05


def test_tuning_state_is_fp32_so_small_updates_are_not_rounded_away(demos):
    _, lm = mixed_pair()
    eta = 1e-4
    first, second = ift.ForwardTuner(lm, eta=eta, beta=0.9, position_mode="aligned").steps(demos, T=2)
    # layer 0 reads only the tokens (aligned positions): its G is exactly 0, so look from layer 1 on
    for old, new in zip(first.keys[1:] + first.values[1:], second.keys[1:] + second.values[1:]):
        assert old.dtype == new.dtype == torch.float32
        step = new - old
        # bf16 keeps 8 significant bits: an update of 1e-4 of G would leave almost every entry unchanged
        assert (step != 0).float().mean() > 0.9
        assert bool(((old + step) == new).all())


def test_gradient_tuning_runs_under_autocast():
    _, lm = mixed_pair(seed=7)
    steps = list(GradientTuner(lm, lr=0.05).steps(GRAD_DEMOS, 3))
    loss = [p.meta["loss"] for p in steps]
    assert loss[2] < loss[0] and not any(p.diverged for p in steps)
    assert all(k.dtype == torch.float32 for k in steps[-1].keys)


def test_load_model_applies_it_and_it_cannot_be_applied_twice(tmp_path):
    lm = load_model(str(save_tiny_model(tmp_path / "tiny", "llama")), dtype="bf16-mixed", device="cpu")
    assert lm.model._ift_autocast == torch.bfloat16
    with pytest.raises(ValueError, match="already runs under autocast"):
        autocast_model(lm.model)


def test_mixed_precision_with_bitsandbytes_is_refused_early():
    with pytest.raises(ValueError, match=r"dtype='bf16-mixed' keeps fp32 weights .* quant='int8'"):
        check_options(dtype="bf16-mixed", quant="int8")
