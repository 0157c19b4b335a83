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
