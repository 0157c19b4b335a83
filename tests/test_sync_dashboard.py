"""`python -m analysis.sync` finds every offline run under stores and sweep dirs and hands wandb sync the right
ones; `python -m analysis.dashboard` builds the RQ1-RQ4 views from keys real runs log, and without network
writes what it would push and says so."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_launch import compose_cfg, stores
from test_tracking import offline_runs, tiny

from analysis import dashboard, sync
from analysis.wandb_offline import read_finished_run as read_run
from ift.experiment import run_job
from ift.experiment.tracking import job_tags

ROOT = Path(__file__).resolve().parents[1]


def offline_run(where: Path, run_id: str, steps=(1,)) -> Path:
    """A real offline wandb run (no model needed) in `where`/wandb."""
    import wandb

    where.mkdir(parents=True, exist_ok=True)
    run = wandb.init(mode="offline", project="ift", id=run_id, dir=str(where), settings=wandb.Settings(console="off"))
    for s in steps:
        run.log({"step": s, "acc": 0.5})
    run.finish()
    (path,) = [p for p in (where / "wandb").glob(f"offline-run-*-{run_id}")]
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """outputs/ with a single run, multirun/ with a sweep job, a store dir (run_job without Hydra), a job with two
    attempts (same run id) and a run that was already synced."""
    root = tmp_path_factory.mktemp("tree")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_SILENT", "true")
        return root, make_tree(root)


def make_tree(root: Path) -> dict:
    runs = {"single": offline_run(root / "outputs/2026-01-01/10-00-00", "single"),
            "sweep": offline_run(root / "multirun/2026-01-01/11-00-00/0", "sweepjob"),
            "store": offline_run(root / "results/demo/tiny/0123456789abcdef", "storejob"),
            "first": offline_run(root / "multirun/2026-01-02/09-00-00/3", "twice", steps=(1, 2))}
    time.sleep(1.1)  # the second attempt starts a second later (offline-run-<YYYYmmdd_HHMMSS>-<id>)
    runs["second"] = offline_run(root / "multirun/2026-01-03/09-00-00/3", "twice", steps=(1, 2, 3))
    runs["synced"] = offline_run(root / "outputs/2026-01-01/12-00-00", "done")
    next(runs["synced"].glob("*.wandb")).with_suffix(".wandb.synced").touch()
    return runs


def test_sync_finds_every_offline_run_and_keeps_the_newest_attempt(tree, capsys):
    root, runs = tree
    found = sync.find_offline_runs([root])
    assert sorted(a.path for a in found) == sorted(runs.values())
    keep, left = sync.select(found)
    assert sorted(a.path for a in keep) == sorted(runs[k] for k in ("single", "sweep", "store", "second"))
    assert {a.path: why for a, why in left} == {
        runs["first"]: "older attempt of run twice (the newest holds every step)", runs["synced"]: "already synced"}
    all_keep, _ = sync.select(found, all_attempts=True, include_synced=True)
    assert len(all_keep) == 6

    assert sync.main([str(root / "multirun"), str(root / "outputs"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "5 offline run(s)" in text and "3 to sync, 2 left out" in text and "dry run: nothing uploaded" in text
    command = next(line for line in text.splitlines() if line.startswith("command: "))
    assert command.split()[1:5] == [sys.executable, "-m", "wandb", "sync"]
    assert str(runs["sweep"]) in command and str(runs["second"]) in command and str(runs["first"]) not in command


def test_sync_runs_wandb_sync_on_the_selected_runs(tree, monkeypatch, capsys):
    root, runs = tree
    calls = []
    monkeypatch.setattr(sync, "unreachable", lambda url, timeout: None)  # as if online
    monkeypatch.setattr(sync.subprocess, "run",
                        lambda cmd, timeout: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert sync.main([str(runs["store"].parents[1]), "--project", "other", "--entity", "me"]) == 0
    (cmd,) = calls
    assert cmd == [sys.executable, "-m", "wandb", "sync", "--include-synced", "--project", "other", "--entity", "me",
                   str(runs["store"])]
    assert sync.main([str(root / "nowhere")]) == 2 and "no such directory" in capsys.readouterr().err


def test_wandb_sync_accepts_the_command(tree):
    """The real `wandb sync --dry-run` on the command analysis.sync builds: the flags exist and the runs are found."""
    root, runs = tree
    cmd = sync.sync_command(sync.select(sync.find_offline_runs([root / "outputs"]))[0], project="p") + ["--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "single" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def logged(tiny_dir, tmp_path_factory):
    """The keys real runs log: a tuning run (with dev rows) and an efficiency run."""
    tmp = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        make_logged(tiny_dir, tmp)
    return [read_run(p) for p in offline_runs(tmp / "tune") + offline_runs(tmp / "eff")], stores(tmp / "r")


def make_logged(tiny_dir, tmp: Path) -> None:
    run_job(compose_cfg(tiny(tiny_dir, tmp / "r", "optim.T=2")), output_dir=tmp / "tune")
    run_job(compose_cfg(tiny(tiny_dir, tmp / "r", "mode=efficiency", "n_shot=1", "optim.T=1",
                             "efficiency.batch_sizes=[1]", "efficiency.n_examples=2")), output_dir=tmp / "eff")


def test_the_dashboard_reads_only_keys_the_runs_log(logged):
    runs, _ = logged
    keys = dashboard.panel_keys(dashboard.spec("me", "ift"))
    history = {k for r in runs for row in r.history for k in row}
    summary = {k for r in runs for k in r.summary}
    config = {k for r in runs for k in r.config}
    assert keys["history"] <= history, keys["history"] - history
    assert keys["summary"] <= summary, keys["summary"] - summary
    assert keys["config"] <= config and keys["x"] <= {"step", "batch_size"}
    assert keys["media"] <= history and keys["table"] <= history  # the heatmap and the tables
    tune, eff = runs
    for key in keys["history"]:  # every line's y is charted against its x by define_metric
        run = eff if "/" in key else tune
        assert run.step_metric(key) in ("step", "batch_size"), key


def test_the_dashboard_has_the_four_research_questions():
    s = dashboard.spec("me", "ift")
    views = {v["tag"]: v for v in s["views"]}
    assert sorted(views) == ["rq1", "rq2", "rq3", "rq4"]

    def panels(tag):
        return [p for sec in views[tag]["sections"] for p in sec["panels"]]

    rq3 = panels("rq3")
    assert {"type": "line", "title": "Accuracy vs tuning step, by η", "x": "step", "y": ["acc"], "groupby": "eta",
            "agg": "mean", "range": "stderr"} in rq3
    assert any(p["type"] == "media" and p["key"] == "grad_norm_heatmap" for p in rq3)
    assert any(p["type"] == "bar" and p["metrics"] == ["icl_acc", "dev_step_acc", "best_eval_acc"] for p in rq3)
    assert any(p["type"] == "line" and p.get("groupby") == "beta" and p["y"] == ["acc"] for p in panels("rq4"))
    assert any(p["type"] == "line" and p["x"] == "batch_size" and "tuned/peak_mem_mb" in p["y"] for p in panels("rq2"))
    assert any(p["type"] == "bar" and "dev_step_acc" in p["metrics"] for p in panels("rq1"))
    assert any(p["y"] == ["peak_mem_mb"] for p in panels("rq3") if p["type"] == "line")  # cost per step
    # every view's filter tag is one the presets give their runs
    for preset, tag in (("rq1_icl_vs_tuned", "rq1"), ("rq2_efficiency", "rq2"), ("rq3_steps_eta", "rq3"),
                        ("rq4_momentum", "rq4"), ("study_ift", "rq4"), ("study_momentum", "rq4")):
        assert tag in job_tags({"task": "t", "model": "m", "method": "ift"}, preset, [])


def test_the_dashboard_command_without_network_writes_the_spec_and_says_so(tmp_path):
    pytest.importorskip("wandb_workspaces")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")  # logged in, server unreachable
    proc = subprocess.run([sys.executable, "-m", "analysis.dashboard", "--entity", "me", "--project", "proj",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not pushed: http://127.0.0.1:9 cannot be reached" in proc.stdout
    written = json.loads((tmp_path / "dashboard-proj.json").read_text())
    assert written["project"] == "proj" and len(written["views"]) == len(written["wandb_views"]) == 4
    view = written["wandb_views"][2]
    assert view["displayName"] == "ift RQ3 steps and eta" and view["project"] == "proj"
    text = json.dumps(view)
    assert "grad_norm_heatmap" in text and '"rq3"' in text and "eta" in text

    dry = subprocess.run([sys.executable, "-m", "analysis.dashboard", "--project", "proj", "--out", str(tmp_path),
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "not pushed: --dry-run" in dry.stdout
