"""Issue 41's fault probes, each on a real store damaged on disk: a finished run is trusted only when its records
agree (else the launcher repairs it, and a dry run says so), valid JSON of the wrong shape is one line naming the
file, a full disk leaves no torn line and resumes cleanly, SIGTERM marks the store interrupted, and analysis names
every run it skips. Tiny random models; each job runs in about a second."""
import errno
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from analysis import archive, study
from analysis.load import load as load_runs
from analysis.load import missing
from ift.experiment import job as job_module
from ift.experiment import layout, modelcache, run_job, storefiles
from ift.experiment.interrupt import JobInterrupted
from ift.experiment.layout import StoreDamaged
from ift.experiment.store import StoreFull

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_model_cache")


def tiny_cfg(tiny_dir, results, *extra):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["model=hf", f"model.source={tiny_dir}", "logger=disabled",
                                            "eval.progress=false", f"results_dir={results}", "optim.T=3", *extra])


def steps_without_timing(store: Path) -> list[dict]:
    drop = ("time_s", "tune_s", "peak_mem_mb")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (store / "steps.jsonl").read_text().splitlines()]


@pytest.fixture
def finished(tiny_dir, tmp_path):
    """A finished T=3 run (its store directory) and its steps without timings: the reference."""
    result = run_job(tiny_cfg(tiny_dir, tmp_path / "r"))
    store = Path(result["store"])
    return store, steps_without_timing(store)


def cut_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1 + 10])  # ten bytes of the last line left


# ---------------------------------------------------------------- a finished run is trusted only when it agrees
def test_a_new_finished_run_records_the_digest_of_its_steps(finished):
    store, _ = finished
    summary = json.loads((store / "summary.json").read_text())
    assert summary[layout.DIGEST_KEY] == layout.digest((store / "steps.jsonl").read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["torn last line", "line damaged mid-file", "a row edited", "summary says more"])
def test_a_damaged_finished_run_is_repaired_and_a_dry_run_says_so(damage, finished, tiny_dir, tmp_path, caplog):
    store, reference = finished
    steps = store / "steps.jsonl"
    if damage == "torn last line":
        cut_last_line(steps)
    elif damage == "line damaged mid-file":
        lines = steps.read_text().splitlines(keepends=True)
        steps.write_text(lines[0] + '{"step": 2, "ac\n' + lines[2])
    elif damage == "a row edited":
        rows = [json.loads(line) for line in steps.read_text().splitlines()]
        rows[1]["acc"] = 0.123456  # parses, counts right: only the digest tells
        steps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # an old run (no digest) whose summary disagrees with its steps
        summary = json.loads((store / "summary.json").read_text())
        summary.pop(layout.DIGEST_KEY)
        summary["last_step"] = 4
        (store / "summary.json").write_text(json.dumps(summary))
    plan = run_job(tiny_cfg(tiny_dir, tmp_path / "r", "dry_run=true"))
    assert plan["action"] == "repair" and plan["plan"].startswith("repair: finished but its records disagree")
    with caplog.at_level("WARNING"):
        result = run_job(tiny_cfg(tiny_dir, tmp_path / "r"))
    assert not result["skipped"] and result["status"] == "finished"
    assert f"{store}: finished run whose records disagree" in caplog.text and "repairing it" in caplog.text
    assert steps_without_timing(store) == reference  # nothing lost: the same steps as the uninterrupted run
    assert run_job(tiny_cfg(tiny_dir, tmp_path / "r"))["skipped"]  # and now trusted


def test_a_finished_run_without_a_digest_is_trusted_on_its_other_records(finished, tiny_dir, tmp_path,
                                                                          monkeypatch):
    """Runs finished before the digest existed (the committed archives) are neither re-run nor dropped."""
    store, _ = finished
    summary = json.loads((store / "summary.json").read_text())
    summary.pop(layout.DIGEST_KEY)
    (store / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setattr(job_module, "load_model_once", lambda *a, **k: pytest.fail("the model was loaded"))
    assert run_job(tiny_cfg(tiny_dir, tmp_path / "r"))["skipped"]
    assert run_job(tiny_cfg(tiny_dir, tmp_path / "r", "dry_run=true"))["action"] == "skip"
    assert not missing(load_runs([store]))


def test_every_committed_archive_run_passes_the_finished_run_check():
    checked = 0
    for path in sorted((ROOT / "docs" / "results").glob("*/runs.tar.gz")):
        for job, files in archive.read(path).items():
            meta, summary = json.loads(files["meta.json"]), json.loads(files["summary.json"])
            assert layout.check_ended(meta, summary, files.get("steps.jsonl"), False) is None, f"{path}:{job}"
            checked += 1
    assert checked > 1000


@pytest.mark.slow
@pytest.mark.parametrize("name, text, kind", [("meta.json", "[]", "list"), ("summary.json", "[1, 2]", "list"),
                                              ("meta.json", '"finished"', "str")])
def test_valid_json_of_the_wrong_shape_is_one_line_naming_the_file(name, text, kind, finished, tiny_dir, tmp_path):
    store, _ = finished
    (store / name).write_text(text)
    for extra in ([], ["dry_run=true"]):
        with pytest.raises(StoreDamaged) as caught:
            run_job(tiny_cfg(tiny_dir, tmp_path / "r", *extra))
        message = str(caught.value)
        assert f"{store / name}: expected a JSON object, found {kind}" in message and "\n" not in message
    (run,) = load_runs([store])
    assert run.skip.startswith(f"unreadable: {store}/{name}: expected a JSON object, found {kind}")


# ---------------------------------------------------------------- analysis names every run it skips
@pytest.mark.slow
def test_a_study_lists_every_skipped_run_and_refuses_to_build_over_a_hole(finished, tiny_dir, tmp_path, capsys):
    store, _ = finished
    other = Path(run_job(tiny_cfg(tiny_dir, tmp_path / "r", "seed=1"))["store"])
    (other / "meta.json").unlink()  # a finished run that lost its meta.json: named, never passed over
    with pytest.raises(SystemExit) as code:
        study.main([str(tmp_path / "r"), "--out", str(tmp_path / "page")])
    err = capsys.readouterr().err
    assert code.value.code == 1 and not (tmp_path / "page" / "study.md").exists()
    assert f"skipped {other}: unreadable: {other}/meta.json is missing" in err
    assert "1 run(s) unreadable, damaged, failed or incomplete (listed above): no page built" in err
    assert study.main([str(tmp_path / "r"), "--out", str(tmp_path / "page"), "--allow-missing"]).exists()
    assert f"skipped {other}" in capsys.readouterr().err


def test_a_study_of_a_directory_that_does_not_exist_is_one_line(capsys):
    with pytest.raises(SystemExit) as code:
        study.main(["/nonexistent/store"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err == "python -m analysis.study: error: results directory /nonexistent/store " \
                                           "does not exist\n"


@pytest.mark.slow
def test_archive_pack_leaves_out_a_damaged_run_and_says_so(finished, tmp_path, capsys):
    store, _ = finished
    cut_last_line(store / "steps.jsonl")
    with pytest.raises(SystemExit) as code:
        archive.main(["pack", str(tmp_path / "r"), str(tmp_path / "a.tar.gz")])
    err = capsys.readouterr().err
    assert code.value.code == 1 and f"left out {store}: damaged: steps.jsonl: the last line is torn" in err
    assert archive.read(tmp_path / "a.tar.gz") == {}


# ---------------------------------------------------------------- a full disk
@pytest.mark.slow
def test_a_full_disk_leaves_no_torn_line_marks_the_run_failed_and_resumes_cleanly(finished, tiny_dir, tmp_path,
                                                                                  monkeypatch):
    _, reference = finished
    real = storefiles.write_all
    writes = []

    def fills_at_step_2(fd, data):
        writes.append(data)
        if b'"step": 2' in data and data.startswith(b'{"step"') and len(writes) < 10:
            os.write(fd, data[: len(data) // 2])  # half a line reaches the disk, then it is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)
    monkeypatch.setattr(storefiles, "write_all", fills_at_step_2)
    with pytest.raises(StoreFull) as caught:
        run_job(tiny_cfg(tiny_dir, tmp_path / "full"))
    store = Path(str(caught.value.path)).parent
    assert str(caught.value) == (f"{store}/steps.jsonl: no space left on device (nothing half-written was kept; "
                                 "free space and re-run the same command to resume)")
    assert (store / "steps.jsonl").read_text().endswith("}\n") and len(steps_without_timing(store)) == 1
    meta = json.loads((store / "meta.json").read_text())
    assert meta["status"] == "failed" and "no space left on device" in meta["error"]
    monkeypatch.setattr(storefiles, "write_all", real)  # space freed
    assert run_job(tiny_cfg(tiny_dir, tmp_path / "full"))["status"] == "finished"
    assert steps_without_timing(store) == reference


@pytest.mark.slow
def test_a_checkpoint_the_disk_cannot_hold_names_its_file(finished, tiny_dir, tmp_path, monkeypatch):
    def full(self, path):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                           "left on device\" }) os error 28")
    monkeypatch.setattr("ift.TunedPrefix.save", full)
    with pytest.raises(StoreFull, match=r"prefix\.safetensors: no space left on device"):
        run_job(tiny_cfg(tiny_dir, tmp_path / "full"))


# ---------------------------------------------------------------- interruptions, model loads, long prompts
@pytest.mark.slow
def test_sigterm_marks_the_store_interrupted_and_names_the_step(finished, tiny_dir, tmp_path):
    _, reference = finished

    def term_at_2(row):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(JobInterrupted) as caught:
        run_job(tiny_cfg(tiny_dir, tmp_path / "t"), on_step=term_at_2)
    store = caught.value.store
    assert str(caught.value) == f"interrupted at step 2; re-run the same command to resume ({store})"
    assert caught.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    meta = json.loads((store / "meta.json").read_text())
    assert (meta["status"], meta["error"]) == ("interrupted", "interrupted by SIGTERM after step 2")
    assert run_job(tiny_cfg(tiny_dir, tmp_path / "t"))["status"] == "finished"
    assert steps_without_timing(store) == reference


@pytest.mark.parametrize("source", ["missing-dir", "empty-dir"])
def test_a_model_that_does_not_load_is_one_line_and_leaves_no_store_folder(source, tmp_path):
    where = tmp_path / source
    if source == "empty-dir":
        where.mkdir()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=hf", f"model.source={where}", "model.trust_remote_code=true",
                                           "logger=wandb_offline", f"results_dir={tmp_path / 'r'}"])
    with pytest.raises(modelcache.ModelLoadError) as caught:
        run_job(cfg, output_dir=tmp_path / "out")
    assert str(where) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "r").exists() and not (tmp_path / "out").exists()  # no store folder, no wandb run


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hub_id_with_the_hub_unreachable_fails_at_once_saying_so(monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with caplog.at_level("WARNING"), pytest.raises(modelcache.ModelLoadError) as caught:
        modelcache.ModelCache()("nobody/no-such-model-41", "fp32", "cpu", "none", False)
    assert "cannot be reached" in caplog.text and "local cache only (HF_HUB_OFFLINE=1)" in caplog.text
    assert "nobody/no-such-model-41" in str(caught.value) and "\n" not in str(caught.value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_a_long_prompt_is_accepted_with_its_length_said(tiny_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(job_module, "LONG_PROMPT_TOKENS", 5)
    with caplog.at_level("WARNING"):
        run_job(tiny_cfg(tiny_dir, tmp_path / "r", "optim.T=1"))
    lengths = json.loads((next((tmp_path / "r").rglob("meta.json"))).read_text())["lengths"]
    assert f"n_shot=1: the demonstrations are {lengths['demo_tokens']} tokens long" in caplog.text
