"""Plug-and-play prefixes: tune once, save, load, answer without demonstrations."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

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


def _saved(tiny_lm, demos, tmp_path, T=2):
    lm = tiny_lm("llama")
    prefix = list(ift.ForwardTuner(lm, eta=0.2).steps(demos, T=T))[-1]
    return lm, prefix, prefix.save(tmp_path / "p.safetensors")


def _rewrite(path, change):
    """Rewrite a saved prefix with `change(tensors, header)` applied, keeping ift's metadata format."""
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["ift"])
    tensors = load_file(str(path))
    change(tensors, header)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ift": json.dumps(header)})


def test_a_safetensors_file_not_written_by_ift_is_named(tiny_lm, tmp_path):
    lm = tiny_lm("llama")
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"not an ift prefix file: .*model\.safetensors"):
        ift.TunedPrefix.load(tmp_path / "model.safetensors", lm)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match=r"not an ift prefix file: .*junk\.safetensors is not a readable"):
        ift.TunedPrefix.load(tmp_path / "junk.safetensors", lm)


@pytest.mark.parametrize("change, match", [
    (lambda t, h: t.pop("layer.1.value"), r"tensor layer\.1\.value is missing"),
    (lambda t, h: t.update({"layer.0.key": t["layer.0.key"][:, :, :-1]}),
     r"tensor layer\.0\.key has shape \[1, 2, 35, 8\], but this model's cache for 36 demonstration tokens is "
     r"\[1, kv_heads, L, head_dim\] = \[1, 2, 36, 8\]"),
    (lambda t, h: t.update({"layer.1.key": t["layer.1.key"].reshape(1, 4, 36, 4)}), r"has shape \[1, 4, 36, 4\]"),
    (lambda t, h: t["layer.1.momentum_value"].view(-1).__setitem__(3, float("nan")),
     r"tensor layer\.1\.momentum_value holds non-finite values"),
    (lambda t, h: t["layer.0.key"].view(-1).__setitem__(0, float("inf")), r"layer\.0\.key holds non-finite"),
    (lambda t, h: [t.pop(k) for k in list(t) if "momentum" in k], r"IFT prefix at step 2 without its momentum"),
    (lambda t, h: t.pop("layer.0.momentum_key"), r"tensor layer\.0\.momentum_key is missing"),
    (lambda t, h: h.update(step=1), r"momentum at step 1"),
    (lambda t, h: h.update(grad_norms_k=[1.0, float("inf")]), r"grad_norms_k holds .*non-finite"),
    (lambda t, h: h.update(grad_norms_v=[1.0]), r"grad_norms_v must list one number per layer \(2\)"),
    (lambda t, h: h.pop("token_ids"), r"ift metadata is incomplete or unreadable"),
])
def test_damaged_prefix_files_are_refused_with_the_reason(tiny_lm, demos, tmp_path, change, match):
    lm, _, path = _saved(tiny_lm, demos, tmp_path)
    _rewrite(path, change)
    with pytest.raises(ValueError, match=rf"prefix file .*p\.safetensors: .*{match}"):
        ift.TunedPrefix.load(path, lm)


def test_step_one_prefix_without_momentum_loads(tiny_lm, demos, tmp_path):
    lm, prefix, path = _saved(tiny_lm, demos, tmp_path, T=1)
    loaded = ift.TunedPrefix.load(path, lm)
    assert loaded.step == 1 and loaded.momentum_k is None
    assert all(torch.equal(a, b) for a, b in zip(loaded.keys, prefix.keys))
