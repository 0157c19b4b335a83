"""Loading from a local HF directory, a GGUF file (the bundled model), with quantisation; option errors."""
import importlib.util
import time

import pytest
import torch

import ift
from ift.models import check_options, load_model
from tiny import save_tiny_model


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="fp8"), r"dtype='fp8' is unknown; choose one of \['fp32', 'bf16', 'fp16', 'bf16-mixed'\]"),
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


@pytest.mark.parametrize("source", ["./nope", "/tmp/ift-no-such-model-dir", "~/ift-no-such-model-dir", "a/b/c"])
def test_missing_local_directory_is_named_without_trying_the_hub(source):
    with pytest.raises(FileNotFoundError, match=r"model source .*: the directory .* does not exist"):
        load_model(source, device="cpu")


def test_unknown_hub_id_offline_fails_fast_and_says_how_to_use_local_files(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, when imported
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"(?s)cannot load model 'ift-nobody/not-a-model'.*Hugging Face Hub.*"
                                      r"model=hf model\.source=/path/to/dir.*load_model\('/path/to/dir'\).*"
                                      r"model=gguf model\.source=/path/file\.gguf.*HF_HUB_OFFLINE=1"):
        load_model("ift-nobody/not-a-model", device="cpu")
    assert time.perf_counter() - start < 10


def test_directory_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"the directory .*empty has no config\.json and no \.gguf file"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; give a Hugging Face model directory"):
        load_model(str(tmp_path / "weights.bin"), device="cpu")


def _pretend_cuda(monkeypatch, capability=(9, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)  # true on V100/T4 too (emulated)


def test_a_cuda_load_goes_straight_to_the_gpu(tmp_path, monkeypatch):
    """A CUDA load asks transformers for a device map (weights onto the GPU as they are read), never host RAM
    first and then .to(cuda); a CPU load keeps the plain path."""
    import transformers

    path = save_tiny_model(tmp_path / "tiny", "llama")
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def record(where, **kwargs):
        seen.append(kwargs)
        return real(where, **{k: v for k, v in kwargs.items() if k != "device_map"})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **kw: pytest.fail(f".to{a} after loading"))
    _pretend_cuda(monkeypatch)
    lm = load_model(str(path), device="cuda")
    assert seen[-1]["device_map"] == {"": "cuda"} and lm.device.type == "cuda"
    monkeypatch.undo()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record)
    assert load_model(str(path), device="cpu").device.type == "cpu" and "device_map" not in seen[-1]


@pytest.mark.parametrize("variable, value, given", [
    ("SLURM_JOB_GPUS", "0,1", True), ("SLURM_GPUS_ON_NODE", "1", True), ("CUDA_VISIBLE_DEVICES", "0", True),
    ("SLURM_GPUS_ON_NODE", "0", False), ("CUDA_VISIBLE_DEVICES", "", False), ("CUDA_VISIBLE_DEVICES", "-1", False),
])
def test_device_auto_on_a_job_given_gpus_that_torch_cannot_see_is_an_error(monkeypatch, variable, value, given):
    """device=auto falls back to the CPU only where no GPU was given: a SLURM job with GPUs and a CPU-only torch
    (or a driver mismatch) must not run for days on the CPU and be stored as a CPU run."""
    from ift.models import GPU_ALLOCATION_VARIABLES, resolve_device

    for name in GPU_ALLOCATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(variable, value)
    if given:
        with pytest.raises(ValueError, match=rf"device='auto': this job was given GPUs \({variable}={value}\) but "
                                             "torch sees no CUDA device.*device=cpu"):
            check_options(device="auto")
    else:
        assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"  # asking for the CPU is always fine
