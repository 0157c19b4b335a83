"""The store across a job's attempts: resumed only from what matches the job, divergence and failures recorded
consistently, another store's runs reused by key, and what a dry run says. Tiny random models; the helpers are
test_store.py's."""
import errno
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from test_store import compose_cfg, meta_of, steps_without_timing, stores, strict_rows, tiny_cfg

import ift
from analysis.load import load as load_runs
from ift.experiment import job as job_module
from ift.experiment import run_job, storefiles
from ift.experiment.config import ConfigError, parse_config
from ift.experiment.hydra_app import SweepReport
from ift.experiment.job import prepare
from ift.experiment.modelcache import ModelLoadError
from ift.experiment.store import JobStore
from jobs import Killed, kill_at

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_model_cache")


# ---------------------------------------------------------------- resume only what matches

def rewrite_prefix_meta(path: Path, **changes) -> None:
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["ift"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["meta"].update(changes)
    save_file(tensors, str(path), metadata={"ift": json.dumps(header)})


@pytest.mark.slow
@pytest.mark.parametrize("change, said", [({"eta": 0.1}, "eta=0.1 (this job: 0.05)"),
                                          ({"beta": 0.0}, "beta=0.0 (this job: 0.9)"),
                                          # the job's auto mode is aligned on a Llama: compared as such
                                          ({"position_mode": "continue"}, "position_mode='continue' (this job: 'aligned')"),
                                          # TunedPrefix.load itself refuses ids that are not this text's
                                          ({"demo_text": "Q: other\nA: cat\n\n"}, "")])
def test_a_checkpoint_tuned_otherwise_is_not_resumed(change, said, tiny_dir, tmp_path, caplog):
    cfg = tiny_cfg(tiny_dir, tmp_path / "a", "optim.T=3", "optim.eta=0.05")
    with pytest.raises(Killed):
        run_job(cfg, on_step=kill_at(2))
    (store,) = stores(tmp_path / "a")
    rewrite_prefix_meta(store / "prefix.safetensors", **change)
    seen = []
    with caplog.at_level("WARNING"):
        assert run_job(cfg, on_step=seen.append)["status"] == "finished"
    assert seen and [r["step"] for r in seen] == [1, 2, 3]
    assert said in caplog.text and "starting clean from step 1 (redoing recorded step(s) 1-2)" in caplog.text
    if "eta" not in change:
        return
    run_job(tiny_cfg(tiny_dir, tmp_path / "b", "optim.T=3", "optim.eta=0.05"))
    (fresh,) = stores(tmp_path / "b")
    assert steps_without_timing(store) == steps_without_timing(fresh)


@pytest.mark.slow
@pytest.mark.parametrize("tamper, redone, said", [
    ("drop_last", [1, 2, 3, 4], "steps.jsonl holds step(s) 1-2 but the checkpoint is at step 3"),
    ("duplicate", [1, 2, 3, 4], "steps.jsonl holds step(s) 1, 2, 2, 3 but the checkpoint is at step 3"),
    ("extra", [4], "step(s) 4 were recorded after the last checkpoint (step 3): redoing them"),
])
def test_redone_steps_are_announced(tamper, redone, said, tiny_dir, tmp_path, caplog):
    cfg = tiny_cfg(tiny_dir, tmp_path, "optim.T=4")
    with pytest.raises(Killed):
        run_job(cfg, on_step=kill_at(3))
    (store,) = stores(tmp_path)
    steps = store / "steps.jsonl"
    rows = strict_rows(steps)
    rows = {"drop_last": rows[:2], "duplicate": rows[:2] + rows[1:], "extra": rows + [{**rows[2], "step": 4}]}[tamper]
    steps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    with caplog.at_level("WARNING"):
        assert run_job(cfg, on_step=seen.append)["status"] == "finished"
    assert [r["step"] for r in seen] == redone and said in caplog.text
    assert [r["step"] for r in strict_rows(steps)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_longer_run_continues_from_the_finished_shorter_one(tiny_dir, tmp_path, caplog):
    results = tmp_path / "results"
    short = run_job(tiny_cfg(tiny_dir, results, "optim.T=2", "optim.eta=0.05", "eval.save_predictions=true"))
    seen = []
    with caplog.at_level("INFO"):
        longer = run_job(tiny_cfg(tiny_dir, results, "optim.T=4", "optim.eta=0.05", "eval.save_predictions=true"),
                         on_step=seen.append)
    assert [r["step"] for r in seen] == [3, 4] and "continuing from the finished T=2 run" in caplog.text
    assert meta_of(Path(longer["store"]))["continued_from"] == short["store"]
    fresh = run_job(tiny_cfg(tiny_dir, tmp_path / "fresh", "optim.T=4", "optim.eta=0.05",
                             "eval.save_predictions=true"))
    assert steps_without_timing(Path(longer["store"])) == steps_without_timing(Path(fresh["store"]))
    assert strict_rows(Path(longer["store"]) / "predictions.jsonl") == \
           strict_rows(Path(fresh["store"]) / "predictions.jsonl")
    assert longer["summary"] == fresh["summary"]
    assert len(strict_rows(Path(short["store"]) / "steps.jsonl")) == 2  # the shorter run is left as it was


@pytest.mark.slow
@pytest.mark.parametrize("shorter, longer", [(["optim.eta=0.1"], []),  # another η
                                            ("killed", []),  # not finished
                                            (["optim.patience=1"], ["optim.patience=1"]),  # early stopping
                                            ([], ["skip_finished=false"])])  # a forced re-run computes all
def test_a_longer_run_does_not_continue_from_another_or_an_unfinished_run(shorter, longer, tiny_dir, tmp_path):
    results = tmp_path / "results"
    if shorter == "killed":
        with pytest.raises(Killed):
            run_job(tiny_cfg(tiny_dir, results, "optim.T=3", "optim.eta=0.05"), on_step=kill_at(3))
    else:
        run_job(tiny_cfg(tiny_dir, results, "optim.T=2", "optim.eta=0.05", *shorter))
    seen = []
    run_job(tiny_cfg(tiny_dir, results, "optim.T=4", "optim.eta=0.05", *longer), on_step=seen.append)
    assert [r["step"] for r in seen][:2] == [1, 2]


def test_prefix_mismatch_names_every_difference():
    from ift.experiment.job import prefix_mismatch

    job = parse_config(compose_cfg(["optim.eta=0.05", "optim.position_mode=continue"]))
    own = {"eta": 0.05, "beta": 0.9, "position_mode": "continue", "demo_text": "d"}
    assert prefix_mismatch(own, job, "d") == ""
    assert prefix_mismatch({**own, "eta": 0.1, "demo_text": "e"}, job, "d") == \
        "eta=0.1 (this job: 0.05), other demonstration text"


# ---------------------------------------------------------------- divergence and failures

@pytest.mark.slow
def test_a_non_finite_norm_ends_the_job_as_diverged_in_standard_json(tiny_dir, tmp_path, monkeypatch):
    real = ift.ForwardTuner.steps

    def steps(self, *args, **kwargs):  # an engine that let an infinite ‖G‖ through at step 3
        for prefix in real(self, *args, **kwargs):
            if prefix.step == 3:
                prefix.grad_norms_k = [float("inf")] + prefix.grad_norms_k[1:]
            yield prefix
    monkeypatch.setattr(ift.ForwardTuner, "steps", steps)
    result = run_job(tiny_cfg(tiny_dir, tmp_path, "optim.T=4"))
    assert result["status"] == "diverged"
    (store,) = stores(tmp_path)
    assert [r["step"] for r in strict_rows(store / "steps.jsonl")] == [1, 2]
    meta = meta_of(store)
    assert meta["status"] == "diverged" and meta["error"] == "non-finite grad_norm_k[0] at step 3"
    assert json.loads((store / "summary.json").read_text())["status"] == "diverged"
    assert load_runs([tmp_path])[0].skip.startswith("diverged after step 2: non-finite")


@pytest.mark.parametrize("broken", ["every file", "error.txt", "summary.json"])
def test_a_failure_while_recording_a_failure_stays_consistent(broken, tiny_dir, tmp_path, monkeypatch):
    failing = []

    def scoring_breaks(*args, **kwargs):
        failing.append(True)
        raise RuntimeError("scoring broke")

    real_sync = storefiles.sync

    def sync(f):
        if failing and (broken == "every file" or Path(f.name).name == broken + ".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(f)

    monkeypatch.setattr(ift, "score_examples", scoring_breaks)
    monkeypatch.setattr(storefiles, "sync", sync)
    with pytest.raises(RuntimeError, match="scoring broke"):  # the job's own error, never the disk's
        run_job(tiny_cfg(tiny_dir, tmp_path, "optim.T=2"))
    (store,) = stores(tmp_path)
    assert not list(store.glob("*.tmp"))
    meta, summary = meta_of(store), store / "summary.json"
    if broken == "every file":  # nothing could be recorded: still marked running, no summary beside it
        assert meta["status"] == "running" and not summary.exists() and not (store / "error.txt").exists()
    elif broken == "error.txt":
        assert meta["status"] == "failed" and meta["error"] == "RuntimeError: scoring broke"
        assert json.loads(summary.read_text())["status"] == "failed" and not (store / "error.txt").exists()
    else:
        assert meta["status"] == "failed" and not summary.exists()
        assert "scoring broke" in (store / "error.txt").read_text()


def test_a_failed_model_load_is_not_retried_by_the_next_jobs(tiny_dir, tmp_path, monkeypatch):
    calls = []

    def unreachable(source, **kwargs):
        calls.append(source)
        raise OSError(f"cannot reach the hub for {source}")
    monkeypatch.setattr(ift, "load_model", unreachable)
    errors = []
    for eta in (0.1, 0.01):
        with pytest.raises(ModelLoadError) as caught:
            run_job(compose_cfg(["model=hf", "model.source=nobody/missing-model", f"optim.eta={eta}",
                                 "logger=disabled", f"results_dir={tmp_path}"]))
        errors.append(caught.value)
    assert calls == ["nobody/missing-model"] and errors[0] is errors[1]
    assert str(errors[0]) == "cannot reach the hub for nobody/missing-model"  # one line, naming the source
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # loaded before the store: no folder left behind
    with pytest.raises(ModelLoadError, match="other/model"):  # another source is tried
        run_job(compose_cfg(["model=hf", "model.source=other/model", "logger=disabled", f"results_dir={tmp_path}"]))
    assert calls == ["nobody/missing-model", "other/model"]


# ---------------------------------------------------------------- reusing another store's runs
@pytest.mark.slow
def test_a_run_ended_in_another_store_under_the_same_key_is_copied_in_not_run(tiny_dir, tmp_path, monkeypatch):
    first = run_job(tiny_cfg(tiny_dir, tmp_path / "nine", "optim.T=2", "seed=1"))
    monkeypatch.setattr(job_module, "load_model_once", lambda *a, **k: pytest.fail("the model was loaded"))
    reused = run_job(tiny_cfg(tiny_dir, tmp_path / "seeds", "optim.T=2", "seed=1",
                              f"reuse_from=[{tmp_path / 'missing'},{tmp_path / 'nine'}]"))
    assert (reused["status"], reused["skipped"], reused["reused_from"]) == ("finished", True, first["store"])
    copy, source = Path(reused["store"]), Path(first["store"])
    assert copy.parent.parent.parent == tmp_path / "seeds" and copy.name == source.name
    assert strict_rows(copy / "steps.jsonl") == strict_rows(source / "steps.jsonl")
    assert meta_of(copy) == {**meta_of(source), "reused_from": first["store"]}
    assert JobStore(prepare(tiny_cfg(tiny_dir, tmp_path / "seeds", "optim.T=2", "seed=1")).job).ended() == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("other", [["seed=2"], ["optim.T=3"], ["skip_finished=false"]])
def test_another_store_is_not_reused_for_another_key_or_a_forced_run(other, tiny_dir, tmp_path):
    run_job(tiny_cfg(tiny_dir, tmp_path / "nine", "optim.T=2", "seed=1"))
    ran = []
    result = run_job(tiny_cfg(tiny_dir, tmp_path / "seeds", "optim.T=2", "seed=1", *other,
                              f"reuse_from=[{tmp_path / 'nine'}]"), on_step=ran.append)
    assert not result["skipped"] and "reused_from" not in result and ran
    assert "reused_from" not in meta_of(Path(result["store"]))


def test_reuse_from_must_be_a_list_of_directories(tmp_path):
    with pytest.raises(ConfigError, match=r"reuse_from must be a list of results-store directories.*'results/nine'"):
        parse_config(compose_cfg([f"results_dir={tmp_path}", "logger=disabled", "reuse_from=results/nine"]))


# ---------------------------------------------------------------- dry runs
def dry(tiny_dir, results, *extra):
    return run_job(tiny_cfg(tiny_dir, results, "dry_run=true", *extra))


@pytest.mark.slow
def test_a_dry_run_says_what_each_job_would_do_and_computes_nothing(tiny_dir, tmp_path, monkeypatch):
    run_job(tiny_cfg(tiny_dir, tmp_path / "r", "optim.T=2", "seed=1"))
    with pytest.raises(Killed):
        run_job(tiny_cfg(tiny_dir, tmp_path / "r", "optim.T=3", "seed=2"), on_step=kill_at(2))
    run_job(tiny_cfg(tiny_dir, tmp_path / "other", "optim.T=2", "seed=3"))
    monkeypatch.setattr(job_module, "load_model_once", lambda *a, **k: pytest.fail("the model was loaded"))
    before = sorted(p for p in (tmp_path / "r").rglob("*") if p.is_file())
    results = tmp_path / "r"
    plans = {name: dry(tiny_dir, results, *extra) for name, extra in {
        "ended": ["optim.T=2", "seed=1"], "longer": ["optim.T=4", "seed=1"], "killed": ["optim.T=3", "seed=2"],
        "new": ["optim.T=2", "seed=4"], "forced": ["optim.T=2", "seed=1", "skip_finished=false"],
        "elsewhere": ["optim.T=2", "seed=3", f"reuse_from=[{tmp_path / 'other'}]"]}.items()}
    assert {name: p["action"] for name, p in plans.items()} == {
        "ended": "skip", "longer": "continue", "killed": "resume", "new": "run", "forced": "run",
        "elsewhere": "copy in"}
    assert plans["longer"]["plan"] == "continue: its finished 2-step run, to step 4"
    assert plans["killed"]["plan"] == "resume: an earlier attempt recorded 2 of 3 step(s)"
    assert plans["new"]["plan"] == "run: 2 step(s)"
    assert all(p["status"] == "planned" and p["skipped"] and p["summary"] is None for p in plans.values())
    assert sorted(p for p in results.rglob("*") if p.is_file()) == before  # nothing written, nothing removed
    assert not Path(plans["new"]["store"]).exists()


def test_a_dry_run_names_a_job_that_another_process_is_running(tiny_dir, tmp_path):
    holder = JobStore(prepare(tiny_cfg(tiny_dir, tmp_path, "optim.T=2")).job)
    holder.lock()
    try:
        plan = dry(tiny_dir, tmp_path, "optim.T=2")
    finally:
        holder.unlock()
    assert plan["action"] == "running elsewhere" and f"pid {os.getpid()}" in plan["plan"]
    assert dry(tiny_dir, tmp_path, "optim.T=2")["action"] == "run"  # released: no lock left behind


def test_the_sweep_report_of_a_dry_run_counts_the_jobs_that_would_compute(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (action, plan) in enumerate([("skip", "skip: already finished"), ("run", "run: 8 step(s)"),
                                        ("resume", "resume: an earlier attempt recorded 3 of 8 step(s)")]):
        (sweep / str(i)).mkdir(parents=True)
        (sweep / str(i) / "job.json").write_text(json.dumps(
            {"status": "planned", "skipped": True, "action": action, "plan": plan, "overrides": [f"seed={i}"]}))
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))  # exits 0
    report = (sweep / "sweep_report.txt").read_text()
    assert "3 job(s), 0 failed (dry run: 2 of 3 would compute)" in report
    assert "[planned, resume: an earlier attempt recorded 3 of 8 step(s)] seed=2" in report
