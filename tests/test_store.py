"""The results store and a job's life in it: keyed by content (not only the config), locked while a job runs,
standard JSON only, resumed only from a checkpoint that matches the job, consistent when recording a failure
fails, and never created for a config or data error. Tiny random models; each job runs in well under a second."""
import errno
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

import ift
from analysis.load import load as load_runs
from ift.experiment import job as job_module
from ift.experiment import run_job, storefiles
from ift.experiment.config import ConfigError, parse_config
from ift.experiment.hydra_app import SweepReport
from ift.experiment.job import prepare
from ift.experiment.modelcache import ModelLoadError
from ift.experiment.store import JobStore, StoreLocked
from ift.jsonl import parse_jsonl, read_jsonl
from jobs import Killed, kill_at

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_model_cache")


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def strict_rows(path: Path) -> list[dict]:
    """JSONL rows, refusing NaN / Infinity (standard JSON)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def stores(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("meta.json"))


def steps_without_timing(store: Path) -> list[dict]:
    """A job's step rows without what varies between identical runs (wall time, memory)."""
    drop = ("time_s", "tune_s", "peak_mem_mb")
    return [{k: v for k, v in r.items() if k not in drop} for r in strict_rows(store / "steps.jsonl")]


def meta_of(store: Path) -> dict:
    return json.loads((store / "meta.json").read_text())


ANIMALS = [("It purrs and chases mice", 0), ("It barks at the postman", 1), ("It gives milk in the barn", 2),
           ("It sleeps in a sunny window", 0), ("It fetches the stick", 1), ("It chews grass all day", 2),
           ("It meows for dinner", 0), ("It wags its tail", 1), ("It moos loudly", 2)]
TEMPLATE = "Q: Which animal? {clue}\\nA:"


def write_user_task(root: Path, template: str = TEMPLATE) -> Path:
    data = root / "data" / "animals"
    data.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", ANIMALS[:6]), ("test", ANIMALS[6:] + ANIMALS[:3])):
        data.joinpath(f"{split}.jsonl").write_text("".join(
            json.dumps({"clue": c, "options": ["cat", "dog", "cow"], "answer": "abc"[y]}) + "\n" for c, y in rows))
    spec = root / "animals.yaml"
    spec.write_text(f"name: animals\ndata_dir: data\ntemplate: \"{template}\"\n"
                    "choices_field: options\nlabel_field: answer\nlabel_values: [a, b, c]\n"
                    "eval_split: test\ndemo_split: train\ndev_size: 2\n")
    return spec


@pytest.fixture
def user_task(tmp_path):
    return write_user_task(tmp_path / "my_tasks")


def tiny_cfg(tiny_dir, results, *extra):
    return compose_cfg(["model=hf", f"model.source={tiny_dir}", "logger=disabled", "eval.progress=false",
                        f"results_dir={results}", *extra])


# ---------------------------------------------------------------- standard JSON, atomic writes

def test_the_store_refuses_non_finite_numbers_and_leaves_no_temporary_file(tmp_path):
    store = JobStore(parse_config(compose_cfg([f"results_dir={tmp_path}"])))
    store.path.mkdir(parents=True)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        store.update_meta(eta=float("inf"))
    store.append_step({"step": 1, "acc": 0.5, "grad_norm_k": [0.0]})
    with pytest.raises(ValueError):
        store.append_step({"step": 2, "acc": 0.5, "grad_norm_k": [float("nan")]})
    assert strict_rows(store.file("steps.jsonl")) == [{"step": 1, "acc": 0.5, "grad_norm_k": [0.0]}]
    assert not list(store.path.glob("*.tmp"))


def test_a_failed_write_leaves_neither_a_temporary_file_nor_a_torn_line(tmp_path, monkeypatch):
    store = JobStore(parse_config(compose_cfg([f"results_dir={tmp_path}"])))
    store.path.mkdir(parents=True)
    store.update_meta(status="running")
    store.append_step({"step": 1, "acc": 0.5})

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def half_then_full(fd, data):  # the disk fills mid-line
        os.write(fd, data[: len(data) // 2])
        disk_full()
    monkeypatch.setattr(storefiles, "sync", disk_full)
    monkeypatch.setattr(storefiles, "write_all", half_then_full)
    with pytest.raises(OSError, match="meta.json: no space left on device"):
        store.update_meta(status="failed")
    with pytest.raises(OSError, match="steps.jsonl: no space left on device"):
        store.append_step({"step": 2, "acc": 0.6})
    assert store.meta()["status"] == "running" and not list(store.path.glob("*.tmp"))
    assert strict_rows(store.file("steps.jsonl")) == [{"step": 1, "acc": 0.5}]


def test_one_reader_drops_a_torn_last_line_with_a_warning_and_refuses_a_torn_middle_line(tmp_path, caplog):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "acc": 0.')  # killed mid-write
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "dropping its torn last line 4" in caplog.text and str(path) in caplog.text
    path.write_text('{"step": 1}\n{"step": 2, "ac\n{"step": 3}\n')  # damage, not a kill: nothing after it is lost
    with pytest.raises(ValueError, match=r"steps.jsonl: line 2 is not valid JSON .* not the last line"):
        read_jsonl(path)
    # analysis reads through the same reader: the damaged run is skipped with the reason
    assert parse_jsonl('{"step": 1}\n{"st', "x") == [{"step": 1}]
    with pytest.raises(ValueError, match="x: line 1"):
        parse_jsonl('{"st\n{"step": 1}', "x")


def test_a_row_appended_after_a_torn_last_line_starts_its_own_line(tmp_path):
    store = JobStore(parse_config(compose_cfg([f"results_dir={tmp_path}"])))
    store.path.mkdir(parents=True)
    store.append_step({"step": 1, "acc": 0.5})
    with open(store.file("steps.jsonl"), "a") as f:
        f.write('{"step": 2, "acc": 0.')  # the killed attempt's torn line
    assert [r["step"] for r in store.steps()] == [1]
    store.append_step({"step": 2, "acc": 0.6})  # the next attempt's row
    assert strict_rows(store.file("steps.jsonl")) == [{"step": 1, "acc": 0.5}, {"step": 2, "acc": 0.6}]
    with open(store.file("steps.jsonl"), "w") as f:
        f.write('{"step": 1, "a')  # a torn first line only
    store.append_step({"step": 1, "acc": 0.5})
    assert strict_rows(store.file("steps.jsonl")) == [{"step": 1, "acc": 0.5}]


# ---------------------------------------------------------------- the key: the content, not only the config

def test_the_store_key_follows_the_task_file_and_the_data_not_where_the_data_lives(user_task, tmp_path):
    def key(*extra):
        return prepare(compose_cfg(["task=file", f"task.file={user_task}", "n_shot=1", *extra])).job.hash

    base = key()
    assert key() == base
    for run_only in ("eval.batch_size=3", "logger=disabled", "device=cpu", "eval.progress=false",
                     f"results_dir={tmp_path / 'elsewhere'}"):
        assert key(run_only) == base, run_only
    # the same bytes in another place: the same numbers, the same key
    moved = tmp_path / "mirror"
    shutil.copytree(user_task.parent / "data", moved)
    assert key(f"task.data_dir={moved}") == base
    # one row edited in place (same size, so only the bytes tell) -> a new key
    test_file = moved / "animals" / "test.jsonl"
    test_file.write_text(test_file.read_text().replace("It meows for dinner", "It meows for supper"))
    assert key(f"task.data_dir={moved}") != base
    # the task YAML edited -> a new key
    user_task.write_text(user_task.read_text().replace("Which animal?", "Which beast?"))
    assert key() != base
    # other demonstrations (another seed) -> a new key
    assert key("seed=1") != key()


def test_the_store_key_of_a_builtin_task_follows_its_data(tmp_path, monkeypatch):
    packaged = prepare(compose_cfg([])).job
    assert packaged.content["data"]["source"] == "local"
    mirror = tmp_path / "mirror"
    shutil.copytree(Path(ift.tasks.__file__).parent / "data" / "demo", mirror / "demo")
    assert prepare(compose_cfg([f"task.data_dir={mirror}"])).job.hash == packaged.hash
    with open(mirror / "demo" / "test.jsonl", "a") as f:
        f.write(json.dumps({"text": "The soup was hot and salty.", "label": 0}) + "\n")
    assert prepare(compose_cfg([f"task.data_dir={mirror}"])).job.hash != packaged.hash


@pytest.mark.slow
def test_an_edited_task_or_data_never_returns_the_old_result(tiny_dir, user_task, tmp_path):
    results = tmp_path / "results"

    def run(**kw):
        return run_job(tiny_cfg(tiny_dir, results, "task=file", f"task.file={user_task}", "optim.T=2", "n_shot=1"),
                       **kw)

    first = run()
    assert first["status"] == "finished" and run()["skipped"]
    data = user_task.parent / "data" / "animals" / "test.jsonl"
    data.write_text(data.read_text().replace("It wags its tail", "It wags its tail happily"))
    second = run()
    assert not second["skipped"] and second["store"] != first["store"]
    # a job killed, then its task file edited: the retry starts clean under the new key (no "other demonstrations")
    user_task.write_text(user_task.read_text().replace("Q: Which", "Question: Which"))
    with pytest.raises(Killed):
        run(on_step=kill_at(1))
    user_task.write_text(user_task.read_text().replace("Question: Which", "Q: Which animal is it?"))
    third = run()
    assert third["status"] == "finished" and not third["skipped"]
    assert len({first["store"], second["store"], third["store"]}) == 3


# ---------------------------------------------------------------- checks before the store

@pytest.mark.parametrize("overrides", [["optim.eta=inf"], ["n_shot=50"], ["task.dev_size=500"],
                                       ["task.eval_split=nope"], ["+task.template='Q: {nothing}'"]])
def test_config_and_data_errors_create_no_store_directory(overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(job_module, "load_model_once", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError):
        run_job(compose_cfg([f"results_dir={tmp_path / 'results'}", "logger=disabled", *overrides]))
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- the lock

def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    job = parse_config(compose_cfg([f"results_dir={tmp_path}"]))
    first, second = JobStore(job), JobStore(job)
    first.lock()
    with pytest.raises(StoreLocked) as caught:
        second.lock()
    assert str(first.path) in str(caught.value) and f"pid {os.getpid()}" in str(caught.value)
    assert socket.gethostname() in caught.value.holder
    first.unlock()
    second.lock()  # free again
    second.unlock()


def test_a_job_running_elsewhere_is_skipped_as_locked(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(job_module, "load_model_once", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = compose_cfg([f"results_dir={tmp_path}", "logger=disabled"])
    holder = JobStore(prepare(cfg).job)
    holder.lock()
    try:
        with caplog.at_level("WARNING"):
            result = run_job(cfg)
    finally:
        holder.unlock()
    assert (result["status"], result["skipped"], result["store"]) == ("locked", True, str(holder.path))
    assert "locked by another run of the same job" in result["error"] and "pid" in result["holder"]
    assert str(holder.path) in caplog.text
    assert not (holder.path / "meta.json").exists()  # nothing was written by the skipped launch


def test_the_sweep_report_does_not_count_a_locked_job_as_done(tmp_path):
    sweep = tmp_path / "sweep"
    for i, record in enumerate([{"status": "finished", "overrides": ["seed=0"], "summary": {}},
                                {"status": "locked", "skipped": True, "overrides": ["seed=1"],
                                 "error": "/r/x is locked by another run of the same job (host h pid 7 since t)"}]):
        (sweep / str(i)).mkdir(parents=True)
        (sweep / str(i) / "job.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as code:
        SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert code.value.code == 1
    report = (sweep / "sweep_report.txt").read_text()
    assert "2 job(s), 0 failed, 1 skipped because the same job is running in another process" in report
    assert "[locked (running elsewhere: skipped)] seed=1" in report and "pid 7" in report


def test_analysis_skips_a_run_with_duplicate_or_non_finite_steps(tmp_path):
    def write(d, rows):
        d.mkdir(parents=True)
        meta = {"status": "finished", "model": "m", "task": "t", "eta": 0.01, "beta": 0.9, "T": 2,
                "position_mode": "continue", "n_shot": 1, "seed": int(d.name), "finished": "2026"}
        (d / "meta.json").write_text(json.dumps(meta))
        (d / "summary.json").write_text(json.dumps({"status": "finished", "icl_acc": 0.5}))
        (d / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    row = {"acc": 0.5, "acc_norm": 0.5, "grad_norm_k": [0.0], "grad_norm_v": [0.0]}
    write(tmp_path / "0", [{**row, "step": 1}, {**row, "step": 2}])
    write(tmp_path / "1", [{**row, "step": 1}, {**row, "step": 2}, {**row, "step": 2}])
    write(tmp_path / "2", [{**row, "step": 1}, {**row, "step": 2, "grad_norm_k": [float("inf")]}])
    runs = {r.meta["seed"]: r for r in load_runs([tmp_path])}
    assert runs[0].skip is None
    assert runs[1].skip.startswith("duplicate steps: step(s) [2]")
    assert runs[2].skip == "malformed: a NaN or infinite number in step 2"


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
