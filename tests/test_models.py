"""Loading from a local HF directory, a GGUF file (the bundled model), with quantisation; option errors."""
import importlib.util

import pytest
import torch

import ift
from ift.models import check_options, load_model
from tiny import save_tiny_model


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="fp8"), r"dtype='fp8' is unknown; choose one of \['bf16', 'fp16', 'fp32'\]"),
    (dict(quant="int4"), r"quant='int4' is unknown; choose one of \['none', 'int8', 'nf4'\]"),
    (dict(quant="int8", device="mps"), "quant='int8' is not available on device 'mps'"),
    (dict(device="potato"), "device='potato' is not a torch device"),
])
def test_bad_loading_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_options(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_requested_without_gpu():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        check_options(device="cuda")


def test_load_local_hf_directory_gives_a_pad_token(tmp_path, demos, examples):
    path = save_tiny_model(tmp_path / "tiny", "llama")
    lm = load_model(str(path), device="cpu")
    assert lm.tokenizer.pad_token is not None and lm.device.type == "cpu"
    scores = ift.score_examples(lm, examples, demonstrations=demos)
    assert len(scores) == len(examples)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("quant, tol", [("int8", 0.5), ("nf4", 2.0)])
def test_quantised_loading_scores_close_to_fp32(tmp_path, demos, examples, quant, tol):
    # bitsandbytes' CPU nf4 kernel packs weights in blocks of 64 inputs x 32 outputs (lm_head included)
    path = save_tiny_model(tmp_path / "tiny", "llama", hidden_size=64, head_dim=16,
                           intermediate_size=128, vocab_size=416)
    full = load_model(str(path), device="cpu")
    quantised = load_model(str(path), device="cpu", quant=quant)
    a = ift.score_examples(full, examples, demonstrations=demos)
    b = ift.score_examples(quantised, examples, demonstrations=demos)
    diffs = [abs(x - y) for s, t in zip(a, b) for x, y in zip(s.sum_logprobs, t.sum_logprobs)]
    assert 0 < max(diffs) < tol  # really quantised, and still the same model


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_model(str(tmp_path / "nope.gguf"))
