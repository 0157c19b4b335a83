"""Study archives (analysis.archive): the finished runs of a store, without benchmark text, read by analysis as
the store itself is, and restored into a store where the launcher skips them. Tiny random model."""
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from analysis import archive
from analysis.load import load as load_runs
from ift.experiment import job as job_module
from ift.experiment import run_job
from jobs import Killed, kill_at

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_model_cache")


def run(tiny_dir, results, seed, on_step=None):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=hf", f"model.source={tiny_dir}", "logger=disabled",
                                           "eval.progress=false", "eval.save_predictions=true", "optim.T=2",
                                           f"seed={seed}", f"results_dir={results}"])
    return run_job(cfg, on_step=on_step)


@pytest.fixture(scope="module")
def store(tiny_dir, tmp_path_factory):
    """Two finished runs (seeds 0, 1) and one killed after its first step (seed 2)."""
    results = tmp_path_factory.mktemp("store") / "results"
    job_module.load_model_once.cache_clear()
    for seed in (0, 1):
        assert run(tiny_dir, results, seed)["status"] == "finished"
    with pytest.raises(Killed):
        run(tiny_dir, results, 2, on_step=kill_at(2))
    return results


def metas(results: Path) -> dict[int, dict]:
    return {json.loads(m.read_text())["seed"]: json.loads(m.read_text()) for m in results.rglob("meta.json")}


@pytest.mark.slow
def test_only_finished_runs_are_packed_with_their_records_and_no_demonstration_text(store, tmp_path):
    path = tmp_path / "runs.tar.gz"
    assert archive.pack(store, path) == (2, 0)
    jobs = archive.read(path)
    assert len(jobs) == 2 and all(set(files) == set(archive.FILES) for files in jobs.values())  # no checkpoint, predictions
    assert {json.loads(files["meta.json"])["seed"] for files in jobs.values()} == {0, 1}  # not the killed seed 2

    local = metas(store)
    for job, files in jobs.items():
        packed = json.loads(files["meta.json"])
        text = local[packed["seed"]]["demonstrations"]["text"]
        assert "text" not in packed["demonstrations"]
        assert packed["demonstrations"]["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        assert packed["demonstrations"]["indices"] == local[packed["seed"]]["demonstrations"]["indices"]
        assert all(text.encode() not in data for other in jobs.values() for data in other.values())
        assert files["steps.jsonl"] == (store / job / "steps.jsonl").read_bytes()


@pytest.mark.slow
def test_analysis_reads_an_archive_as_it_reads_the_store(store, tmp_path):
    path = tmp_path / "runs.tar.gz"
    archive.pack(store, path)
    from_store = {r.key(): r for r in load_runs([str(store)]) if r.skip is None}
    from_archive = {r.key(): r for r in load_runs([str(path)]) if r.skip is None}
    assert len(from_store) == 2 and from_archive.keys() == from_store.keys()
    for key, run_ in from_archive.items():
        assert (run_.steps, run_.summary) == (from_store[key].steps, from_store[key].summary)


@pytest.mark.slow
def test_a_restored_run_is_skipped_by_the_launcher(store, tiny_dir, tmp_path):
    path = tmp_path / "runs.tar.gz"
    archive.pack(store, path)
    restored = tmp_path / "elsewhere"
    assert archive.unpack(path, restored) == (2, 0)
    assert archive.unpack(path, restored) == (0, 2)  # nothing is overwritten
    again = run(tiny_dir, restored, 0)
    assert again["skipped"] and again["status"] == "finished"
    fresh = run(tiny_dir, restored, 2)  # the killed run was not archived: it runs here
    assert not fresh["skipped"] and fresh["status"] == "finished"


@pytest.mark.slow
def test_packing_is_deterministic_and_keeps_runs_only_the_archive_holds(store, tiny_dir, tmp_path):
    path = tmp_path / "runs.tar.gz"
    archive.pack(store, path)
    first = path.read_bytes()
    assert archive.pack(store, path) == (2, 0) and path.read_bytes() == first  # same runs, same bytes
    other = tmp_path / "other"
    assert run(tiny_dir, other, 3)["status"] == "finished"
    assert archive.pack(other, path) == (1, 2)  # seed 3 from the store, seeds 0 and 1 kept
    assert {json.loads(files["meta.json"])["seed"] for files in archive.read(path).values()} == {0, 1, 3}


@pytest.mark.slow
def test_packing_some_tasks_of_a_shared_store_leaves_the_others_out(store, tmp_path):
    shared = tmp_path / "shared"
    (task,) = [d.name for d in store.iterdir()]
    shutil.copytree(store / task, shared / task)
    shutil.copytree(store / task, shared / "other")  # another page's task in the same store
    path = tmp_path / "runs.tar.gz"
    assert archive.pack(shared, path, tasks=[task]) == (2, 0)
    assert {job.split("/")[0] for job in archive.read(path)} == {task}
    assert archive.pack(shared, tmp_path / "all.tar.gz") == (4, 0)


@pytest.mark.slow
def test_whole_seeds_leaves_out_a_seed_stopped_midway(store, tmp_path, capsys):
    """A seed-by-seed study stopped mid-seed: seed 1 has one run where seed 0 has two (a second arm)."""
    shared = tmp_path / "shared"
    (task,) = [d.name for d in store.iterdir()]
    shutil.copytree(store / task, shared / task)
    seed0 = next(m.parent for m in shared.rglob("meta.json") if json.loads(m.read_text())["seed"] == 0)
    shutil.copytree(seed0, seed0.with_name("another-arm"))
    seeds = lambda path: sorted(json.loads(f["meta.json"])["seed"] for f in archive.read(path).values())
    assert archive.pack(shared, tmp_path / "all.tar.gz") == (3, 0)
    assert seeds(tmp_path / "all.tar.gz") == [0, 0, 1]
    assert archive.pack(shared, tmp_path / "whole.tar.gz", whole_seeds=[task]) == (2, 0)
    assert seeds(tmp_path / "whole.tar.gz") == [0, 0]
    assert f"{task} seed 1: 1 of 2 runs, left out (a partial seed)" in capsys.readouterr().out
    # a partial seed's runs are left out only where the archive does not hold them: a pack never shrinks it,
    # whether the store still has the runs (a new arm started on seed 0 only) or not
    with pytest.raises(ValueError, match=r"partial seed\(s\) \[\('.*', 1\)\] .* have runs .*all.tar.gz already "
                                         r"holds, and a pack never drops those"):
        archive.pack(shared, tmp_path / "all.tar.gz", whole_seeds=[task])
    shutil.rmtree(next(m.parent for m in shared.rglob("meta.json") if json.loads(m.read_text())["seed"] == 1))
    with pytest.raises(ValueError, match=r"partial seed\(s\) \[\('.*', 1\)\]"):
        archive.pack(shared, tmp_path / "all.tar.gz", whole_seeds=[task])
    assert seeds(tmp_path / "all.tar.gz") == [0, 0, 1]  # untouched
    with pytest.raises(ValueError, match="--whole-seeds: no runs of task\\(s\\) nope"):
        archive.pack(shared, tmp_path / "x.tar.gz", whole_seeds=["nope"])


def test_an_archive_with_other_files_or_paths_is_refused(tmp_path):
    for name in ("../escape/meta.json", "sst2/model/abc/prefix.safetensors"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        bad = tmp_path / "bad.tar.gz"
        bad.write_bytes(buf.getvalue())
        with pytest.raises(ValueError, match="unexpected member"):
            archive.read(bad)
