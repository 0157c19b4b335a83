"""Plug-and-play prefixes: tune once, save, load, answer without demonstrations."""
import pytest

import ift
from tiny import make_tiny_model, make_tokenizer


def test_save_load_round_trip_gives_identical_scores(tiny_lm, demos, examples, tmp_path):
    lm = tiny_lm("llama")
    prefix = list(ift.ForwardTuner(lm, eta=0.2, beta=0.9, position_mode="aligned").steps(demos, T=3))[-1]
    path = prefix.save(tmp_path / "prefix.safetensors")
    loaded = ift.TunedPrefix.load(path, lm)
    assert (loaded.step, loaded.meta["eta"], loaded.meta["position_mode"]) == (3, 0.2, "aligned")
    assert loaded.meta["demo_text"] == demos and loaded.token_ids == prefix.token_ids
    before = ift.score_examples(lm, examples, prefix=prefix)
    after = ift.score_examples(lm, examples, prefix=loaded)
    assert [s.sum_logprobs for s in before] == [s.sum_logprobs for s in after]
    # the optimiser state travels too, so tuning can resume from a saved prefix
    more = list(ift.ForwardTuner(lm, eta=0.2, beta=0.9, position_mode="aligned").steps(demos, T=4, resume_from=loaded))
    assert [p.step for p in more] == [4]


@pytest.mark.parametrize("other, match", [
    (lambda: ift.from_objects(make_tiny_model("llama", seed=1), make_tokenizer(), "tiny-llama-1"),
     "input embeddings differ"),
    (lambda: ift.from_objects(make_tiny_model("gpt2"), make_tokenizer(), "tiny-gpt2"), "model_type"),
])
def test_loading_into_another_model_fails(tiny_lm, demos, tmp_path, other, match):
    lm = tiny_lm("llama")
    path = next(ift.ForwardTuner(lm).steps(demos, T=1)).save(tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match=f"was tuned on model 'tiny-llama-0'.*{match}"):
        ift.TunedPrefix.load(path, other())


def test_loading_with_another_tokenizer_fails(tiny_lm, demos, tmp_path):
    lm = tiny_lm("llama")
    path = next(ift.ForwardTuner(lm).steps(demos, T=1)).save(tmp_path / "p.safetensors")
    no_bos = ift.from_objects(lm.model, make_tokenizer(add_bos=False), lm.name)
    with pytest.raises(ValueError, match="different tokenizer"):
        ift.TunedPrefix.load(path, no_bos)
