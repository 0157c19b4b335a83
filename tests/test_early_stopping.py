"""Early stopping (optim.patience): the engine's rule by hand, the analysis' simulation agrees with it, and a
job that stops early records exactly the first steps of the full run, resumes, and keeps its own store key."""
import random

import pytest
from test_methods import cfg, rows  # the same tiny task and job config as the methods' tests
from test_methods import meta as methods_meta

import ift
from analysis import arms
from analysis.load import load as load_runs
from ift.experiment import run_job
from ift.experiment.config import ConfigError
from ift.experiment.job import prepare
from jobs import Killed, kill_at


def stop_step(dev: list, patience: int) -> int:
    stopper = ift.EarlyStopping(patience)
    for d in dev:
        if stopper.update(d):
            break
    return stopper.step


def test_early_stopping_by_hand():
    stop = ift.EarlyStopping(patience=2)
    assert [stop.update(x) for x in (0.5, 0.6, 0.6, 0.55)] == [False, False, False, True]
    assert (stop.best_step, stop.best) == (2, 0.6)  # ties are no improvement: step 3 did not move the best
    stop = ift.EarlyStopping(patience=1)
    assert [stop.update(x) for x in (None, float("nan"), 0.1)] == [True, True, False]  # no score never improves
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="patience must be an integer >= 1"):
            ift.EarlyStopping(bad)


def test_the_analysis_simulates_the_same_rule_as_the_run():
    rng = random.Random(0)
    for _ in range(300):
        dev = [rng.choice([50.0, 60.0, 70.0, None]) for _ in range(rng.randint(1, 10))]
        patience = rng.randint(1, 4)
        assert arms.early_stop([float("nan") if d is None else d for d in dev], patience) == \
            stop_step(dev, patience), (dev, patience)


@pytest.mark.slow
def test_an_early_stopped_job_records_the_full_runs_first_steps(tiny_dir, tmp_path):
    full = run_job(cfg(tiny_dir, tmp_path, "optim.T=6", "optim.eta=0.5"))
    stopped = run_job(cfg(tiny_dir, tmp_path, "optim.T=6", "optim.eta=0.5", "optim.patience=1"))
    assert stopped["store"] != full["store"]  # its own store key: never served for a full run, nor the reverse
    k = stop_step([r["dev_acc"] for r in rows(full)], 1)
    assert k < 6, "the tiny model's dev curve must stop this run early for the test to mean anything"
    same = ("step", "acc", "dev_acc", "grad_norm_k", "grad_norm_v", "tune_tokens")
    assert [{f: r[f] for f in same} for r in rows(stopped)] == [{f: r[f] for f in same} for r in rows(full)[:k]]
    summary = stopped["summary"]
    assert summary["stopped_early"] == k and summary["last_step"] == k and summary["status"] == "finished"
    assert summary["dev_step"] == max(rows(full)[:k], key=lambda r: (r["dev_acc"], -r["step"]))["step"]
    assert full["summary"].get("stopped_early") is None
    meta = methods_meta(stopped)
    assert (meta["patience"], meta["T"]) == (1, 6)
    # analysis reads it as complete (not "k of T steps") and keeps it apart from the full run
    loaded = load_runs([tmp_path])
    assert [r.skip for r in loaded] == [None, None]
    labels = {tuple(arms.arms_of(r)) for r in loaded}
    assert any("run-time early stopping, patience 1" in a[0] for a in labels)


@pytest.mark.slow
def test_a_killed_early_stopping_job_resumes_to_the_same_result(tiny_dir, tmp_path):
    args = ("optim.T=6", "optim.eta=0.5", "optim.patience=1")
    whole = run_job(cfg(tiny_dir, tmp_path / "a", *args))
    with pytest.raises(Killed):
        run_job(cfg(tiny_dir, tmp_path / "b", *args), on_step=kill_at(2))
    resumed = run_job(cfg(tiny_dir, tmp_path / "b", *args))
    assert [(r["step"], r["acc"], r["dev_acc"]) for r in rows(resumed)] == \
        [(r["step"], r["acc"], r["dev_acc"]) for r in rows(whole)]
    assert resumed["summary"]["stopped_early"] == whole["summary"]["stopped_early"]


def test_patience_needs_dev_rows_and_a_positive_integer(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"optim.patience=2 .*no dev rows \(task.dev_size=0\)"):
        prepare(cfg(tiny_dir, tmp_path, "optim.patience=2", "task.dev_size=0"))
    with pytest.raises(ConfigError, match=r"optim.patience .* must be an integer >= 1, got 0"):
        prepare(cfg(tiny_dir, tmp_path, "optim.patience=0"))
    prepare(cfg(tiny_dir, tmp_path, "method=zero_shot", "optim.patience=2", "task.dev_size=0"))  # not iterative


@pytest.mark.slow
def test_patience_keys_only_the_iterative_methods(tiny_dir, tmp_path):
    def key(*extra):
        return prepare(cfg(tiny_dir, tmp_path, *extra)).job.hash

    assert key() == key("optim.patience=null")
    assert key("optim.patience=2") != key() != key("optim.patience=3")
    assert key("method=grad", "optim.patience=2") != key("method=grad")
    assert key("method=repeat", "optim.patience=2") == key("method=repeat")  # runs every r anyway


def test_the_sweep_report_says_where_a_job_stopped():
    from ift.experiment.hydra_app import _numbers

    summary = {"icl_acc": 0.5, "best_eval_acc": 0.6, "best_eval_step": 2, "dev_step": 2, "dev_step_acc": 0.6}
    assert "stopped early" not in _numbers({**summary, "stopped_early": None})
    assert _numbers({**summary, "stopped_early": 4}).endswith("dev-chosen step 2: 0.6000, stopped early after step 4")
