"""`python -m ift.check`: the self-check users run on their node first. It runs here on the CPU."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ift
import ift.check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU verdict; a GPU node checks the device too")
def test_the_self_check_passes_on_this_cpu_and_prints_its_verdict():
    """The command as the README gives it: a table of checks, a verdict, exit status 0."""
    done = subprocess.run([sys.executable, "-m", "ift.check", "--device", "cpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ift self-check" and lines[-1].startswith("verdict: PASS (")
    rows = {line.split("  ")[0].strip(): line for line in lines if line.startswith(("fp32", "fp16", "bf16", "int8",
                                                                                     "nf4", "prefix"))}
    assert "PASS" in rows["fp32: tune, score, gradient"] and "PASS" in rows["prefix saved and reloaded"]
    assert "SKIP    CUDA only" in rows["fp16"]
    assert "torch " + torch.__version__ in done.stdout


@pytest.mark.slow
def test_a_failing_check_fails_the_verdict_and_the_exit_status(monkeypatch, capsys):
    """A prefix that does not come back as saved (here: reloaded as the plain ICL prefix) is a FAIL line, the
    verdict says FAIL and main() returns 1; the other checks still run. No bitsandbytes checks here (speed)."""

    def stale(path, lm):
        return next(ift.ForwardTuner(lm).steps(ift.check.DEMOS, 1))

    monkeypatch.setattr(ift.TunedPrefix, "load", staticmethod(stale))
    monkeypatch.setattr(ift.check, "precisions", lambda device: [("int8", "SKIP: not in this test", None)])
    assert ift.check.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("prefix saved and reloaded"))
    assert row.split() == "prefix saved and reloaded cpu FAIL scores changed after reload".split()
    assert "fp32: tune, score, gradient" in out and out.splitlines()[-1] == \
        "verdict: FAIL (1 passed, 1 failed, 1 skipped)"


def test_a_device_that_is_not_there_is_a_failure_not_a_cpu_run(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ift.check.main(["--device", "cuda"]) == 1
    out = capsys.readouterr().out
    assert "no CUDA device is available" in out and out.splitlines()[-1].startswith("verdict: FAIL")


@pytest.mark.slow
def test_the_bundled_gguf_check_compares_devices():
    """Run only on a GPU by the command; its comparison is checked here with the CPU standing in."""
    try:
        ift.models.bundled_model_path()
    except FileNotFoundError:
        pytest.skip("the bundled model is not installed")
    ok, detail, _ = ift.check.gguf_on_device(torch.device("cpu"))
    assert ok and detail == "max |score - cpu| 0.0e+00 (allowed 0.01)"


def test_device_scores_are_compared_per_method_with_a_floor_for_the_gradient():
    reference = {"icl": [-5.0, -6.0], "grad": [-5.0, -6.0]}
    assert ift.check.within(reference, {"icl": [-5.0005, -6.0], "grad": [-5.03, -6.0]}, 1e-3) == \
        (True, "max |score - cpu fp32| 5.0e-04 (allowed 0.001), gradient 3.0e-02 (0.05)")
    assert not ift.check.within(reference, {"icl": [-5.002, -6.0], "grad": [-5.0, -6.0]}, 1e-3)[0]
    assert not ift.check.within(reference, {"icl": [-5.0, -6.0], "grad": [-5.0, -6.06]}, 1e-3)[0]
    assert ift.check.within(reference, {"icl": [-5.1, -6.0]}, 0.5) == (True, "max |score - cpu fp32| 1.0e-01 (allowed 0.5)")
