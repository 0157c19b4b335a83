"""The results store and a job's life in it: keyed by content (not only the config), locked while a job runs,
standard JSON only, and never created for a config or data error (resuming, failures, reuse and dry runs:
test_store_resume.py). Tiny random models; each job runs in well under a second."""
import errno
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ift
from analysis.load import load as load_runs
from ift.experiment import job as job_module
from ift.experiment import run_job, storefiles
from ift.experiment.config import parse_config
from ift.experiment.hydra_app import SweepReport
from ift.experiment.job import prepare
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
