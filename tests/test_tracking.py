"""The wandb contract on real offline runs (tiny model, small T), read back from the `.wandb` file with
wandb's own protobuf records (analysis.wandb_offline): one run per job whatever happens (stable id, resume),
group per sweep, names from the swept overrides, tags, every chart against the tuning step, the layer ×
step norm table and heatmap, summary semantics, and a config that holds inputs only."""
import json
from pathlib import Path

import pytest
from test_launch import compose_cfg, launch, read_rows, stores

from analysis.wandb_offline import OfflineRunError, records
from analysis.wandb_offline import read_finished_run as read_run
from ift.experiment import run_job
from ift.experiment.modelcache import ModelLoadError
from ift.experiment.tracking import NORM_IMAGE, NORM_TABLE, job_tags, run_id, run_name, sweep_group
from jobs import Killed, kill_at

STEP_KEYS = ("acc", "acc_norm", "dev_acc", "tune_tokens", "peak_mem_mb", "time_s", "eval_tokens_per_query")


def offline_runs(root: Path) -> list[Path]:
    return sorted(root.rglob("offline-run-*"), key=lambda p: p.name)


def tiny(tiny_dir, results, *extra):
    return ["model=hf", f"model.source={tiny_dir}", "logger=wandb_offline", "eval.progress=false",
            f"results_dir={results}", *extra]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.mark.slow
def test_a_job_is_one_readable_run_against_the_tuning_step(tiny_dir, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    result = run_job(compose_cfg(tiny(tiny_dir, results, "optim.T=3")), output_dir=out)
    assert result["status"] == "finished"
    (store,) = stores(results)
    (path,) = offline_runs(out)
    run = read_run(path)
    meta = json.loads((store / "meta.json").read_text())
    steps = read_rows(store / "steps.jsonl")

    assert run.id == run_id(store) and len(run.id) == 16
    assert run.name == f"demo-tinyllama-{meta['config_hash'][:8]}" and run.group == ""  # no sweep: no group
    assert set(run.tags) == {"task:demo", "model:tinyllama", "method:ift", "position:aligned"}  # auto resolved
    assert run.exit_code == 0 and run.job_type == "tune"

    # config = inputs only: no status, timing or host; position_mode follows auto's resolution
    assert not {"status", "error", "started", "finished", "attempts", "host", "lengths"} & set(run.config)
    assert run.config["task"] == "demo" and run.config["eta"] == 0.1 and run.config["T"] == 3
    assert run.config["position_mode"] == "aligned" and run.config["store"] == str(store)
    assert run.config["config"]["optim"]["T"] == 3

    # every per-step key is charted against `step`; the per-layer scalars are hidden (the heatmap shows them)
    for key in (*STEP_KEYS, "grad_norm_k/1"):
        assert run.step_metric(key) == "step", key
    assert run.hidden("grad_norm_k/0") and run.hidden("grad_norm_v/1") and not run.hidden("acc")
    by_step = {r["step"]: r for r in run.history if "acc" in r}
    assert sorted(by_step) == [1, 2, 3]
    for s in steps:
        assert by_step[s["step"]]["acc"] == s["acc"] and by_step[s["step"]]["peak_mem_mb"] == s["peak_mem_mb"]
        assert [by_step[s["step"]][f"grad_norm_k/{i}"] for i in range(2)] == s["grad_norm_k"]

    # the layer × step matrix: one table (long format) and one heatmap image, logged once at the end
    table_rows = [r for r in run.history if NORM_TABLE in r]
    assert len(table_rows) == 1 and table_rows[0][NORM_TABLE]["_type"] == "table-file"
    assert table_rows[0][NORM_TABLE]["nrows"] == 3 * 2  # steps × layers
    table = json.loads((path / "files" / table_rows[0][NORM_TABLE]["path"]).read_text())
    assert table["columns"] == ["step", "layer", "grad_norm_k", "grad_norm_v"]
    cell = {(s, layer): (k, v) for s, layer, k, v in table["data"]}
    assert all(cell[(s["step"], i)] == (s["grad_norm_k"][i], s["grad_norm_v"][i]) for s in steps for i in range(2))
    assert table_rows[0][NORM_IMAGE]["_type"] == "image-file"
    assert (path / "files" / table_rows[0][NORM_IMAGE]["path"]).stat().st_size > 1000

    # the summary: the store's numbers, status and diverged; per-step keys summed up as declared
    summary = json.loads((store / "summary.json").read_text())
    for key in ("icl_acc", "best_eval_step", "best_eval_acc", "dev_step", "dev_step_acc", "last_step", "status"):
        assert run.summary[key] == summary[key], key
    assert run.summary["diverged"] is False and "error" not in run.summary
    assert run.summary["peak_mem_mb"] == {"max": max(s["peak_mem_mb"] for s in steps)}


@pytest.mark.slow
def test_a_killed_and_resumed_job_stays_one_run_with_every_step(tiny_dir, tmp_path):
    results = tmp_path / "results"
    with pytest.raises(Killed):
        run_job(compose_cfg(tiny(tiny_dir, results, "optim.T=4")), output_dir=tmp_path / "a1", on_step=kill_at(2))
    run_job(compose_cfg(tiny(tiny_dir, results, "optim.T=4")), output_dir=tmp_path / "a2")
    (first,), (second,) = offline_runs(tmp_path / "a1"), offline_runs(tmp_path / "a2")
    killed, resumed = read_run(first), read_run(second)
    (store,) = stores(results)
    assert killed.id == resumed.id == run_id(store) and killed.name == resumed.name
    assert killed.exit_code == 1 and "status" not in killed.summary  # left open by the kill, closed as failed
    assert sorted(r["step"] for r in killed.history if "acc" in r) == [1, 2]
    # the resumed attempt re-logs the kept steps: the newest file of a run holds the whole curve
    assert sorted(r["step"] for r in resumed.history if "acc" in r) == [1, 2, 3, 4]
    assert resumed.summary["status"] == "finished" and resumed.exit_code == 0
    assert json.loads((store / "meta.json").read_text())["attempts"] == 2


def test_a_model_that_fails_to_load_leaves_no_wandb_run_and_no_store(tmp_path, fresh_model_cache):
    out = tmp_path / "out"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        run_job(compose_cfg(tiny(tmp_path / "no-such-model", tmp_path / "r", "optim.T=2")), output_dir=out)
    assert not offline_runs(tmp_path) and not (tmp_path / "r").exists()


def test_a_run_that_fails_after_the_model_loaded_is_a_failed_run_with_the_error(tiny_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("scoring broke")
    monkeypatch.setattr("ift.score_examples", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="scoring broke"):
        run_job(compose_cfg(tiny(tiny_dir, tmp_path / "r", "optim.T=2")), output_dir=out)
    (path,) = offline_runs(out)
    run = read_run(path)
    assert run.exit_code == 1 and run.summary["status"] == "failed" and "scoring broke" in run.summary["error"]
    assert "status" not in run.config


@pytest.mark.slow
def test_a_sweep_is_one_group_with_runs_named_by_their_overrides(tiny_dir, tmp_path):
    results, sweep = tmp_path / "results", tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    proc = launch(["-m", *tiny(tiny_dir, results, "optim.T=2", "optim.eta=0.1,0.01", "logger.tags=[mine]"),
                   f"hydra.sweep.dir={sweep}"], env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [read_run(p) for p in offline_runs(sweep)]
    assert len(runs) == 2 and len({r.id for r in runs}) == 2
    (group,) = {r.group for r in runs}
    assert group.startswith("optim.eta-2026-01-02_03-04-05-")  # the swept key and the sweep's date and time
    assert sorted(r.name for r in runs) == ["optim.eta=0.01", "optim.eta=0.1"]
    assert all("mine" in r.tags and "task:demo" in r.tags for r in runs)


def test_group_tags_and_id_rules():
    ctx = {"sweep_dir": "/x/multirun/2026-05-06/07-08-09", "experiment": "rq3_steps_eta",
           "overrides": ["experiment=rq3_steps_eta", "optim.eta=0.1", "task=sst2", "model=gpt2"],
           "swept": ["optim.eta", "task"], "override_dirname": "model=gpt2,optim.eta=0.1,task=sst2"}
    group = sweep_group(ctx)
    assert group.startswith("rq3_steps_eta-2026-05-06_07-08-09-") and len(group.rsplit("-", 1)[1]) == 6
    assert sweep_group({**ctx, "sweep_dir": "/y/multirun/2026-05-06/07-08-09"}) != group  # unique per sweep dir
    assert sweep_group({**ctx, "experiment": None}).startswith("optim.eta+task-2026-05-06_07-08-09-")
    assert run_name(ctx, "fallback") == "optim.eta=0.1,task=sst2"
    assert run_name({**ctx, "swept": []}, "fallback") == "model=gpt2,optim.eta=0.1,task=sst2"
    assert run_name({}, "fallback") == "fallback"
    meta = {"task": "sst2", "model": "gpt2", "method": "ift", "position_mode": "continue", "mode": "tune"}
    assert job_tags(meta, "rq3_steps_eta", ["x"]) == ["task:sst2", "model:gpt2", "method:ift", "position:continue",
                                                      "experiment:rq3_steps_eta", "rq3", "x"]
    assert "rq4" in job_tags({**meta, "method": "zero_shot", "position_mode": None}, "study_momentum", [])
    assert run_id(Path("/r/sst2/gpt2/abc")) != run_id(Path("/other/sst2/gpt2/abc"))


def test_the_reader_refuses_what_is_not_a_wandb_run(tmp_path):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a run file at all")
    with pytest.raises(OfflineRunError, match="not a wandb run file"):
        list(records(bad))
    with pytest.raises(OfflineRunError, match="no .wandb file"):
        read_run(tmp_path / "empty")


@pytest.mark.slow
def test_efficiency_runs_chart_each_method_against_the_batch(tiny_dir, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    cfg = compose_cfg(tiny(tiny_dir, results, "mode=efficiency", "n_shot=1", "optim.T=2",
                           "efficiency.batch_sizes=[1,2]", "efficiency.n_examples=4"))
    assert run_job(cfg, output_dir=out)["status"] == "finished"
    (store,) = stores(results)
    run = read_run(*offline_runs(out))
    assert run.job_type == "efficiency" and "mode:efficiency" in run.tags
    assert run.step_metric("icl/peak_mem_mb") == run.step_metric("tuned/queries_per_s") == "batch_size"
    assert run.hidden("queries_per_s") and not run.hidden("tuned/peak_mem_mb")
    rows = read_rows(store / "efficiency.jsonl")
    logged = [r for r in run.history if "batch_size" in r and "method" in r]
    assert [(r["method"], r["batch_size"], r[f"{r['method']}/peak_mem_mb"]) for r in logged] == \
        [(r["method"], r["batch_size"], r["peak_mem_mb"]) for r in rows]
    (tab,) = [r["efficiency"] for r in run.history if "efficiency" in r]
    assert tab["nrows"] == len(rows) == 4
    summary = json.loads((store / "summary.json").read_text())
    assert run.summary["icl_queries_per_s"] == summary["icl_queries_per_s"] and run.summary["status"] == "finished"


@pytest.mark.slow
def test_the_tuned_prefix_is_an_artifact_only_when_asked(tiny_dir, tmp_path):
    results = tmp_path / "results"
    run_job(compose_cfg(tiny(tiny_dir, results, "optim.T=2")), output_dir=tmp_path / "plain")
    run_job(compose_cfg(tiny(tiny_dir, results, "optim.T=2", "optim.eta=0.05", "logger.log_artifacts=true",
                             "eval.save_predictions=true")), output_dir=tmp_path / "asked")
    def prefixes(run):
        return [a for a in run.artifacts if a["type"] == "tuned-prefix"]  # (tables are run_table artifacts)

    assert prefixes(read_run(*offline_runs(tmp_path / "plain"))) == []
    (artifact,) = prefixes(read_run(*offline_runs(tmp_path / "asked")))
    assert {"prefix.safetensors", "predictions.jsonl", "summary.json"} <= set(artifact["files"])
