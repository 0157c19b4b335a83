"""`python -m analysis.studies run quick --out DIR`: the whole study pipeline (every method, IFT with and without
momentum, the archive, the page) from the preset conf/experiment/study/quick.yaml, on the bundled model and the
real mirror, on a tiny slice. Skipped without the mirror or the bundled model."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mirror import DATA, needs_mirror

import ift
from analysis import study
from analysis.load import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_mirror("sst2", "copa")
def test_the_quick_study_runs_every_method_and_writes_the_page(tmp_path):
    try:
        ift.models.bundled_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    results, out = tmp_path / "studies", tmp_path / "page"
    env = {**os.environ, "IFT_DATA_DIR": str(DATA)}
    proc = subprocess.run([sys.executable, "-m", "analysis.studies", "run", "quick", "--out", str(out),
                           f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)  # a hang, not a slow machine
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    runs = load([results])
    assert [r.skip for r in runs if r.skip] == []
    # 2 tasks x 2 seeds x 6 arms (IFT with and without momentum, 4 baselines)
    assert len(runs) == 2 * 2 * 6
    assert {r.method for r in runs} == {"ift", "zero_shot", "repeat", "more_demos", "grad"}
    page = (out / "study.md").read_text()
    for arm in ("zero-shot", "ICL ×r (r on dev)", "ICL, k×n shots (k on dev)", "gradient tuning",
                "IFT aligned β=0 (η, T on dev)", "Does the pseudo-gradient point where the true gradient does?"):
        assert arm in page, arm
    assert (out / "study_cosine.png").exists() and (out / "study_curves.png").exists()
    # beside the page: the command that reproduces it and the plan
    readme = (out / "README.md").read_text()
    assert "python -m analysis.studies run quick" in readme and "sst2        beta0             seeds 0-1" in readme
    # the finished runs are packed beside the page, and the page is rebuilt from that file alone
    title = "IFT against its baselines (bundled SmolLM2-135M)"  # the quick preset's
    rebuilt = study.main([str(out / "runs.tar.gz"), "--out", str(tmp_path / "rebuilt"), "--title", title])
    assert len(load([out / "runs.tar.gz"])) == len(runs)
    assert rebuilt.read_text() == page
    # run again: every job is skipped as finished, nothing is added to the archive
    again = subprocess.run([sys.executable, "-m", "analysis.studies", "run", "quick", "--out", str(out),
                            f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'again'}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "sweep_report.txt").read_text().count("already finished: skipped") == 24
