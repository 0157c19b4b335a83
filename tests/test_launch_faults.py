"""launch.py under faults, end to end: two sweeps started together get folders of their own, a sweep's summary is
printed once, a model that does not load is one line with no store folder left, and SIGTERM ends a job with one
line saying how to resume (status `interrupted`, exit 128 + 15)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}


def start(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_sweeps_started_together_get_their_own_folders_and_reports(tmp_path):
    common = ["-m", "logger=disabled", "dry_run=true", f"results_dir={tmp_path / 'r'}"]
    procs = [start(common + ["seed=1,2"], tmp_path), start(common + ["seed=3,4"], tmp_path)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    sweeps = sorted(p.parent for p in (tmp_path / "multirun").rglob("sweep_report.txt"))
    assert len(sweeps) == 2  # two folders, even when both started in the same second
    reports = {tuple(sorted(o for j in s.glob("*/job.json") for o in json.loads(j.read_text())["overrides"]
                            if o.startswith("seed="))):
               (s / "sweep_report.txt").read_text() for s in sweeps}
    assert set(reports) == {("seed=1", "seed=2"), ("seed=3", "seed=4")}
    for seeds, report in reports.items():
        assert "2 job(s), 0 failed" in report
        assert all(s in report for s in seeds) and not any(f"seed={n}" in report for n in range(1, 5)
                                                          if f"seed={n}" not in seeds)


def test_a_failed_sweep_prints_its_summary_once(tmp_path):
    proc = start(["-m", "logger=disabled", "dry_run=true", "optim.eta=0.1,-1", f"results_dir={tmp_path / 'r'}"],
                 tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert (out + err).count("2 job(s), 1 failed") == 1 and "Traceback" not in out + err


def test_a_model_path_that_does_not_exist_is_one_line_and_leaves_nothing_behind(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = start(["model=hf", f"model.source={missing}", "logger=wandb_offline", f"results_dir={tmp_path / 'r'}",
                  f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in out + err
    lines = [line for line in (out + err).splitlines() if str(missing) in line]
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert not (tmp_path / "r").exists() and not list((tmp_path / "out").rglob("offline-run-*"))


def test_sigterm_ends_a_job_with_one_line_and_the_store_says_interrupted(tiny_dir, tmp_path):
    results = tmp_path / "r"
    proc = start(["model=hf", f"model.source={tiny_dir}", "optim.T=400", "logger=disabled", "eval.progress=false",
                  "task.eval_limit=4", f"results_dir={results}", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(p.stat().st_size for p in results.rglob("steps.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in out + err
    (meta_path,) = results.rglob("meta.json")
    meta = json.loads(meta_path.read_text())
    step = len((meta_path.parent / "steps.jsonl").read_text().splitlines())
    assert meta["status"] == "interrupted"
    lines = [line for line in (out + err).splitlines() if "interrupted at step" in line]
    assert len(lines) == 1 and lines[0].endswith(f"interrupted at step {step}; re-run the same command to resume "
                                                 f"({meta_path.parent})")
