"""quant=auto: the faster precision of this machine, resolved before the job and recorded as resolved, so a
run's store key and meta say which precision produced its numbers (never "auto")."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import ift.models
from ift.experiment import ConfigError, parse_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def job_for(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return parse_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("flags,expected", [("fpu avx512f avx512_bf16", "fp32"),
                                            ("fpu avx512f amx_bf16 amx_tile", "bf16-mixed")])
def test_auto_picks_bf16_mixed_only_on_a_cpu_with_amx_and_keys_the_run_by_the_resolved_precision(
        monkeypatch, flags, expected):
    monkeypatch.setattr(ift.models, "_cpu_flags", lambda: flags)
    assert ift.models.fast_dtype("cpu") == expected
    auto = job_for("quant=auto", "device=cpu")
    explicit = job_for("quant=bf16_mixed" if expected == "bf16-mixed" else "quant=none", "device=cpu")
    assert auto.model.dtype == expected and auto.hash == explicit.hash


def test_auto_with_a_bad_device_names_the_field():
    with pytest.raises(ConfigError, match="device"):
        job_for("quant=auto", "device=tpu:9")


@pytest.mark.parametrize("capability, mixed, quantised", [((7, 0), "fp32", "fp16"), ((7, 5), "fp32", "fp16"),
                                                          ((8, 0), "bf16-mixed", "bf16"), ((9, 0), "bf16-mixed", "bf16")])
def test_auto_on_a_gpu_counts_native_bf16_only(monkeypatch, capability, mixed, quantised):
    """V100 (7.0) and T4 (7.5) emulate bf16, slower than fp32, although torch.cuda.is_bf16_supported() is true
    there: quant=auto picks fp32 on them. int8/nf4 compute in bf16 or fp16 on a GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert ift.models.fast_dtype("cuda") == mixed
    assert ift.models.fast_dtype("cuda", "int8") == ift.models.fast_dtype("cuda:0", "nf4") == quantised


@pytest.mark.parametrize("flags", ["fpu avx512f", "fpu avx512f amx_bf16 amx_tile"])
def test_int8_and_nf4_compute_in_fp32_on_a_cpu_and_keep_their_keys(monkeypatch, flags):
    """conf/quant/int8.yaml and nf4.yaml say dtype=auto: on a CPU (AMX or not) that is fp32, as the files said
    before, so the store keys of CPU int8/nf4 runs do not move."""
    monkeypatch.setattr(ift.models, "_cpu_flags", lambda: flags)
    for quant in ("int8", "nf4"):
        auto = job_for(f"quant={quant}", "device=cpu", "model=hf", "model.source=/some/dir")
        fp32 = job_for(f"quant={quant}", "quant.dtype=fp32", "device=cpu", "model=hf", "model.source=/some/dir")
        assert auto.model.dtype == "fp32" and auto.hash == fp32.hash


def test_the_device_kind_enters_the_key_only_off_the_cpu(monkeypatch):
    """A GPU run must not be skipped as finished because a CPU run of the same config exists; CPU keys stay
    those of the committed archives (tests/test_store_keys.py pins them)."""
    import torch

    cpu, auto = job_for("device=cpu"), job_for()
    assert cpu.hash == auto.hash and "device" not in cpu.identity()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu, gpu_auto, gpu1 = job_for("device=cuda"), job_for(), job_for("device=cuda:1")
    assert gpu.identity()["device"] == "cuda" and gpu.hash == gpu_auto.hash == gpu1.hash != cpu.hash
    assert job_for("device=cpu").hash == cpu.hash
