"""launch.py end to end on a tiny random model: results store, offline wandb, sweeps that survive failures,
re-runs that skip finished jobs, killed jobs that resume, the efficiency study, and the analysis report."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_store import steps_without_timing

from analysis.load import load as load_runs
from ift.experiment import run_job
from jobs import Killed, kill_at

ROOT = Path(__file__).resolve().parents[1]


def launch(args, cwd=ROOT, timeout=300, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset it
    return subprocess.run([sys.executable, "launch.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def stores(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("meta.json"))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


ANIMALS = [("It purrs and chases mice", 0), ("It barks at the postman", 1), ("It gives milk in the barn", 2),
           ("It sleeps in a sunny window", 0), ("It fetches the stick", 1), ("It chews grass all day", 2),
           ("It meows for dinner", 0), ("It wags its tail", 1), ("It moos loudly", 2)]


@pytest.fixture
def user_task(tmp_path):
    """A user-defined multiple-choice task declared in YAML only, with letter answers mapped by label_values."""
    data = tmp_path / "my_tasks" / "data" / "animals"
    data.mkdir(parents=True)
    for split, rows in (("train", ANIMALS[:6]), ("test", ANIMALS[6:] + ANIMALS[:3])):
        data.joinpath(f"{split}.jsonl").write_text("".join(
            json.dumps({"clue": c, "options": ["cat", "dog", "cow"], "answer": "abc"[y]}) + "\n" for c, y in rows))
    spec = tmp_path / "my_tasks" / "animals.yaml"
    spec.write_text("name: animals\ndata_dir: data\ntemplate: \"Q: Which animal? {clue}\\nA:\"\n"
                    "choices_field: options\nlabel_field: answer\nlabel_values: [a, b, c]\n"
                    "eval_split: test\ndemo_split: train\ndev_size: 2\n")
    return spec


@pytest.mark.slow
def test_launch_writes_the_results_store_and_an_offline_wandb_run(tiny_dir, user_task, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    proc = launch(["model=hf", f"model.source={tiny_dir}", "task=file", f"task.file={user_task}", "optim.T=3",
                   "n_shot=2", "logger=wandb_offline", "eval.save_predictions=true", "eval.progress=false",
                   f"results_dir={results}", f"hydra.run.dir={out}"], env={"WANDB_MODE": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (store,) = stores(results)
    meta = json.loads((store / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["task"] == "animals" and meta["model"] == "tinyllama"
    assert (meta["T"], meta["n_shot"], meta["eta"], meta["task_type"]) == (3, 2, 0.1, "multiple_choice")
    demos = meta["demonstrations"]
    assert len(demos["indices"]) == 2 and demos["split"] == "train" and demos["text"].endswith("\n\n")
    steps = read_rows(store / "steps.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(len(s["grad_norm_k"]) == 2 and len(s["grad_norm_v"]) == 2 for s in steps)  # one per layer
    assert steps[0]["grad_norm_k"] == [0.0, 0.0] and all(s["grad_norm_k"][1] > 0 for s in steps[1:])
    # the default mode (auto) is aligned on a Llama: layer 0 re-reads the same tokens at the same positions
    assert meta["position_mode"] == "aligned" and all(s["grad_norm_k"][0] == 0.0 for s in steps)
    assert all(s["dev_acc"] is not None and s["peak_mem_mb"] > 0 and s["time_s"] > 0 for s in steps)
    summary = json.loads((store / "summary.json").read_text())
    best = max(steps, key=lambda s: (s["acc"], -s["step"]))
    assert summary["status"] == "finished" and summary["icl_acc"] == steps[0]["acc"]
    assert (summary["best_eval_step"], summary["best_eval_acc"]) == (best["step"], best["acc"])
    preds = read_rows(store / "predictions.jsonl")
    assert len(preds) == 3 * meta["n_eval"] == 18 and {p["step"] for p in preds} == {1, 2, 3}
    assert (store / "prefix.safetensors").exists() and "optim:" in (store / "config.yaml").read_text()
    assert list((out / "wandb").glob("offline-run-*")), "wandb offline left no run directory"
    assert json.loads((out / "job.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_task_file_takes_the_documented_overrides(tiny_dir, user_task, tmp_path):
    """conf/task/file.yaml declares eval_split, demo_split, eval_limit, dev_size and data_dir (null: the file's value)."""
    results = tmp_path / "results"
    base = ["model=hf", f"model.source={tiny_dir}", "task=file", f"task.file={user_task}", "optim.T=1",
            "logger=disabled", "eval.progress=false", f"results_dir={results}"]
    run_job(compose_cfg(base))
    run_job(compose_cfg(base + ["task.eval_limit=2", "task.dev_size=1"]))
    mirror = tmp_path / "mirror" / "animals"
    mirror.mkdir(parents=True)
    rows = (user_task.parent / "data" / "animals" / "test.jsonl").read_text()
    (mirror / "heldout.jsonl").write_text(rows)
    (mirror / "pool.jsonl").write_text((user_task.parent / "data" / "animals" / "train.jsonl").read_text())
    run_job(compose_cfg(base + [f"task.data_dir={mirror.parent}", "task.eval_split=heldout", "task.demo_split=pool"]))
    metas = {(m["n_eval"], m["n_dev"], m["demonstrations"]["split"])
             for m in (json.loads((s / "meta.json").read_text()) for s in stores(results))}
    assert metas == {(6, 2, "train"), (2, 1, "train"), (6, 2, "pool")}


@pytest.mark.slow
def test_a_second_launch_of_a_running_job_is_skipped_and_exits_non_zero(tiny_dir, tmp_path):
    import fcntl

    from ift.experiment.job import prepare
    from ift.experiment.store import JobStore

    results = tmp_path / "results"
    args = ["model=hf", f"model.source={tiny_dir}", "optim.T=2", "logger=disabled", "eval.progress=false",
            f"results_dir={results}"]
    store = JobStore(prepare(compose_cfg(args)).job)
    store.path.mkdir(parents=True)
    with open(store.path / ".lock", "w") as held:  # another process's run of the same job, as far as flock can tell
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("host elsewhere pid 4242 since then\n")
        held.flush()
        proc = launch(args + [f"hydra.run.dir={tmp_path / 'out'}"])
    assert proc.returncode != 0
    assert f"{store.path} is locked by another run of the same job (host elsewhere pid 4242" in proc.stderr + proc.stdout
    assert not (store.path / "meta.json").exists()
    assert json.loads((tmp_path / "out" / "job.json").read_text())["status"] == "locked"


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_a_rerun_skips_finished_jobs(tiny_dir, tmp_path):
    results = tmp_path / "results"
    args = ["-m", "model=hf", f"model.source={tiny_dir}", "optim.T=2", "optim.eta=0.1,-1,0.01", "logger=disabled",
            "eval.progress=false", f"results_dir={results}"]
    first = launch(args + [f"hydra.sweep.dir={tmp_path / 'sweep1'}"])
    assert first.returncode == 1, "a sweep with a failed job must exit non-zero"
    report = (tmp_path / "sweep1" / "sweep_report.txt").read_text()
    assert "3 job(s), 1 failed" in report and "optim.eta must be a finite number > 0, got -1" in report
    done = stores(results)
    assert len(done) == 2 and all(json.loads((s / "meta.json").read_text())["status"] == "finished" for s in done)
    stamps = {s: (s / "steps.jsonl").stat().st_mtime_ns for s in done}

    second = launch(args[:5] + ["optim.eta=0.1,0.01"] + args[6:] + [f"hydra.sweep.dir={tmp_path / 'sweep2'}"])
    assert second.returncode == 0, second.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep2").glob("*/job.json"))]
    assert len(jobs) == 2 and all(j["skipped"] and j["status"] == "finished" for j in jobs)
    assert {s: (s / "steps.jsonl").stat().st_mtime_ns for s in done} == stamps  # no work redone


@pytest.mark.slow
def test_a_killed_job_resumes_from_its_last_step_and_matches_an_uninterrupted_run(tiny_dir, tmp_path, caplog):
    def cfg(results):
        return compose_cfg(["model=hf", f"model.source={tiny_dir}", "optim.T=5", "optim.eta=0.05",
                            "logger=disabled", "eval.progress=false", f"results_dir={results}"])

    with pytest.raises(Killed):
        run_job(cfg(tmp_path / "a"), on_step=kill_at(3))
    (store,) = stores(tmp_path / "a")
    assert json.loads((store / "meta.json").read_text())["status"] == "running"
    assert len(read_rows(store / "steps.jsonl")) == 3

    seen = []
    with caplog.at_level("INFO"):
        result = run_job(cfg(tmp_path / "a"), on_step=seen.append)
    assert result["status"] == "finished" and "resuming from step 3 of 5" in caplog.text
    assert [r["step"] for r in seen] == [4, 5]  # steps 1-3 were not recomputed
    assert json.loads((store / "meta.json").read_text())["attempts"] == 2

    run_job(cfg(tmp_path / "b"))
    (fresh,) = stores(tmp_path / "b")
    assert steps_without_timing(store) == steps_without_timing(fresh)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_every_step_once(tiny_dir, tmp_path):
    results, T = tmp_path / "results", 150
    args = ["model=hf", f"model.source={tiny_dir}", f"optim.T={T}", "logger=disabled", "eval.progress=false",
            "task.dev_size=0", f"results_dir={results}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "launch.py", *args, f"hydra.run.dir={tmp_path / 'run1'}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list(results.rglob("steps.jsonl"))
            if found and len(read_rows(found[0])) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed: raise T"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (store,) = stores(results)
    killed_at = len(read_rows(store / "steps.jsonl"))
    assert 3 <= killed_at < T and json.loads((store / "meta.json").read_text())["status"] == "running"

    rerun = launch(args + [f"hydra.run.dir={tmp_path / 'run2'}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout + rerun.stderr
    assert [r["step"] for r in read_rows(store / "steps.jsonl")] == list(range(1, T + 1))
    assert json.loads((store / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_divergence_is_recorded_and_analysis_skips_it(tiny_dir, tmp_path):
    results = tmp_path / "results"
    base = ["model=hf", f"model.source={tiny_dir}", "logger=disabled", "eval.progress=false", "optim.T=4",
            f"results_dir={results}"]
    assert run_job(compose_cfg(base + ["optim.eta=1e38"]))["status"] == "diverged"
    again = run_job(compose_cfg(base + ["optim.eta=1e38"]))  # deterministic: not worth running again
    assert (again["status"], again["skipped"]) == ("diverged", True)
    assert run_job(compose_cfg(base + ["optim.eta=0.01"]))["status"] == "finished"
    runs = {r.meta["eta"]: r for r in load_runs([results])}
    assert runs[0.01].skip is None
    assert runs[1e38].skip.startswith("diverged after step") and "non-finite" in runs[1e38].skip


@pytest.mark.slow
def test_efficiency_mode_feeds_figure_3(tiny_dir, tmp_path):
    results = tmp_path / "results"
    # n_shot=1: the preset's 4 shots per class (333 tokens, re-read at 333..665) overflow the tiny model's 512 positions
    cfg = compose_cfg(["experiment=rq2_efficiency", "task=demo", "model=hf", f"model.source={tiny_dir}", "n_shot=1",
                       "logger=disabled", "efficiency.batch_sizes=[1,4]", "efficiency.n_examples=8",
                       f"results_dir={results}"])
    assert run_job(cfg)["status"] == "finished"
    (store,) = stores(results)
    rows = read_rows(store / "efficiency.jsonl")
    assert sorted((r["method"], r["batch_size"]) for r in rows) == [("icl", 1), ("icl", 4), ("tuned", 1), ("tuned", 4)]
    # the tuned prefix spares the model the demonstrations' tokens on every query
    tpq = {r["method"]: r["tokens_per_query"] for r in rows}
    assert tpq["tuned"] < tpq["icl"]
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(results), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "fig3_efficiency.png").exists() and "tinyllama" in (out / "report.md").read_text()


@pytest.mark.slow
def test_analysis_reads_a_tuning_sweep_from_the_store(tiny_dir, tmp_path):
    results = tmp_path / "results"
    for eta in (0.1, 0.01):
        for seed in (0, 1):
            run_job(compose_cfg(["model=hf", f"model.source={tiny_dir}", "logger=disabled", "eval.progress=false",
                                 "optim.T=3", f"optim.eta={eta}", f"seed={seed}", f"results_dir={results}"]))
    runs = load_runs([results])
    assert len(runs) == 4 and all(r.skip is None for r in runs)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(results), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "demo" in text and "tinyllama" in text and (out / "fig4_accuracy_curves.png").exists()


@pytest.mark.slow
def test_wandb_online_without_a_reachable_server_falls_back_to_offline(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: the network is "down"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "out"
    start = time.time()
    result = run_job(compose_cfg(["model=hf", f"model.source={tiny_dir}", "optim.T=2", "logger=wandb_online",
                                  "logger.init_timeout=5", "eval.progress=false", f"results_dir={tmp_path / 'r'}"]),
                     output_dir=out)
    assert result["status"] == "finished" and time.time() - start < 120
    assert list((out / "wandb").glob("offline-run-*")), "no offline run after the online start failed"


def test_a_wandb_error_mid_run_only_turns_tracking_off(tiny_dir, tmp_path, monkeypatch):
    import wandb

    class BrokenRun:
        dir, summary = str(tmp_path), {}

        def log(self, *args, **kwargs):
            raise ConnectionError("network gone")

        def finish(self, exit_code=0):
            raise AssertionError("finish must not be called on a run tracking gave up on")

    monkeypatch.setattr(wandb, "init", lambda **kwargs: BrokenRun())
    result = run_job(compose_cfg(["model=hf", f"model.source={tiny_dir}", "optim.T=3", "logger=wandb_offline",
                                  "eval.progress=false", f"results_dir={tmp_path / 'r'}"]), output_dir=tmp_path)
    assert result["status"] == "finished" and result["summary"]["last_step"] == 3


@pytest.mark.slow
def test_jobs_of_one_process_load_their_model_once(tiny_dir, tmp_path, monkeypatch):
    import ift
    from ift.experiment import job as job_module

    loads = []
    real = ift.load_model
    monkeypatch.setattr(ift, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    job_module.load_model_once.cache_clear()
    for eta in (0.1, 0.01, 0.001):
        run_job(compose_cfg(["model=hf", f"model.source={tiny_dir}", "optim.T=2", f"optim.eta={eta}",
                             "logger=disabled", "eval.progress=false", f"results_dir={tmp_path}"]))
    assert len(loads) == 1
    job_module.load_model_once.cache_clear()


@pytest.mark.slow
def test_a_bad_value_in_a_single_run_is_one_clear_line_and_exit_status_2(tmp_path):
    proc = launch(["model.trust_remote_code=no", "logger=disabled", f"results_dir={tmp_path / 'r'}",
                   f"hydra.run.dir={tmp_path / 'out'}"])
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "model.trust_remote_code must be true or false, got 'no'" in out
    assert "Traceback" not in out and not (tmp_path / "r").exists()


def test_auto_position_mode_is_recorded_as_the_mode_it_ran(tiny_dir, tmp_path):
    result = run_job(compose_cfg(["model=hf", f"model.source={tiny_dir}", "optim.T=2", "optim.position_mode=auto",
                                  "logger=disabled", "eval.progress=false", f"results_dir={tmp_path}"]))
    meta = json.loads((Path(result["store"]) / "meta.json").read_text())
    assert result["status"] == "finished" and meta["position_mode"] == "aligned"  # a Llama has positions to align
    aligned = run_job(compose_cfg(["model=hf", f"model.source={tiny_dir}", "optim.T=2",
                                   "optim.position_mode=aligned", "logger=disabled", "eval.progress=false",
                                   f"results_dir={tmp_path}"]))
    assert aligned["store"] != result["store"]  # own key, same numbers
    rows = [read_rows(Path(r["store"]) / "steps.jsonl") for r in (result, aligned)]
    assert [r["acc"] for r in rows[0]] == [r["acc"] for r in rows[1]]
