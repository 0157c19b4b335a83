"""`bash scripts/studies.sh --quick`: the whole study pipeline (every method, IFT with and without momentum, the
page) on the bundled model and the real mirror, on a tiny slice in one launch. Skipped without the mirror or the
bundled model."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ift
from analysis import study
from analysis.load import load

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IFT_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "sst2").is_dir() or not (DATA / "copa").is_dir(), reason=f"no mirror at {DATA}")
def test_the_quick_study_runs_every_method_and_writes_the_page(tmp_path):
    try:
        ift.models.bundled_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    results, out = tmp_path / "studies", tmp_path / "page"
    env = {**os.environ, "IFT_DATA_DIR": str(DATA), "STUDY_RESULTS": str(results), "STUDY_OUT": str(out),
           "PY": sys.executable}
    proc = subprocess.run(["bash", "scripts/studies.sh", "--quick", "eval.progress=false"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)  # a hang, not a slow machine
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    runs = load([results])
    assert [r.skip for r in runs if r.skip] == []
    # 2 tasks x 2 seeds x (ift with and without momentum; baselines: 4 methods)
    assert len(runs) == 2 * 2 * (2 + 4)
    assert {r.method for r in runs} == {"ift", "zero_shot", "repeat", "more_demos", "grad"}
    page = (out / "study.md").read_text()
    for arm in ("zero-shot", "ICL ×r (r on dev)", "ICL, k×n shots (k on dev)", "gradient tuning",
                "IFT (mode, η, β, T on dev)", "IFT aligned β=0 (η, T on dev)",
                "Does the pseudo-gradient point where the true gradient does?"):
        assert arm in page, arm
    assert (out / "study_cosine.png").exists() and (out / "study_curves.png").exists()
    # the finished runs are packed beside the page, and the page is rebuilt from that file alone
    title = "IFT against its baselines (bundled SmolLM2-135M)"  # the --quick page's
    rebuilt = study.main([str(out / "runs.tar.gz"), "--out", str(tmp_path / "rebuilt"), "--title", title])
    assert len(load([out / "runs.tar.gz"])) == len(runs)
    assert rebuilt.read_text() == page
