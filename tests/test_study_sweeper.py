"""The study sweeper launches only the jobs that compute: a restarted study hands the launcher (a SLURM job array,
joblib workers) no job whose store key already ended, and the sweep report still lists every job."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mirror import DATA, needs_mirror

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp_path, model, sweep, *extra):
    proc = subprocess.run([sys.executable, "launch.py", "-m", "experiment=study/quick", "hydra.sweeper.tasks=[sst2]",
                           "model=hf", f"model.source={model}", f"results_dir={tmp_path / 'results'}",
                           f"hydra.sweep.dir={tmp_path / sweep}", *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "IFT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr, (tmp_path / sweep / "sweep_report.txt").read_text()


def launched(sweep_dir: Path) -> int:
    """The jobs Hydra ran: its numbered job directories."""
    return sum(p.is_dir() and p.name.isdigit() for p in sweep_dir.iterdir())


@pytest.mark.slow
@needs_mirror("sst2")
def test_a_restarted_study_launches_only_the_jobs_that_compute(tmp_path):
    from tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "my-model", "llama", max_position_embeddings=2048)  # 4 demos fit
    _, first = launch(tmp_path, model, "first")
    assert "12 job(s), 0 failed" in first and launched(tmp_path / "first") == 12
    # one run loses its summary (killed before it wrote it): that job computes again, the other 11 are not launched
    summaries = sorted((tmp_path / "results").rglob("summary.json"))
    assert len(summaries) == 12
    summaries[0].unlink()
    log, again = launch(tmp_path, model, "again")
    assert "11 of 12 job(s) already ended with this config, not launched" in log
    assert launched(tmp_path / "again") == 1 and (summaries[0]).exists()
    assert "12 job(s), 0 failed" in again and again.count("(already finished: skipped)") == 11
    skipped = [json.loads(p.read_text()) for p in (tmp_path / "again").glob("ended-*/job.json")]
    assert len(skipped) == 11 and all(r["status"] == "finished" and r["store"] for r in skipped)
    # skip_ended=false: every job is launched and skips itself; a dry run plans every job, skipped or not
    _, third = launch(tmp_path, model, "third", "hydra.sweeper.skip_ended=false")
    assert launched(tmp_path / "third") == 12 and third.count("(already finished: skipped)") == 12
    _, dry = launch(tmp_path, model, "dry", "dry_run=true")
    assert launched(tmp_path / "dry") == 12 and "(dry run: 0 of 12 would compute)" in dry


def test_a_first_launch_makes_no_jobs_checks(tmp_path):
    """With no ended run in the study's store (a first launch), the sweeper hands every job on unchecked."""
    from omegaconf import OmegaConf

    from hydra_plugins.ift_study.study_sweeper import StudySweeper

    sweeper = StudySweeper([], skip_ended=True)
    sweeper.config = OmegaConf.create({"results_dir": "store", "hydra": {"runtime": {"cwd": str(tmp_path)}}})
    assert not sweeper._store_has_ended_runs()  # no store at all: sweep() checks no job
    (tmp_path / "store" / "sst2" / "m" / "k").mkdir(parents=True)
    assert not sweeper._store_has_ended_runs()  # a run that never ended
    (tmp_path / "store" / "sst2" / "m" / "k" / "summary.json").write_text("{}")
    assert sweeper._store_has_ended_runs()
