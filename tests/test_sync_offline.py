"""wandb without a network: `analysis.sync` checks the server first and gives up at once saying so, gives each
run its own time limit and says what it synced and what not; a job asked to log online falls back to offline
under its own run id; and a job's wandb copy can be rebuilt from the results store. Unreachable hosts are a
closed port on 127.0.0.1 only."""
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_sync_dashboard import offline_run

from analysis import sync
from analysis.wandb_offline import read_finished_run as read_run
from ift.experiment import run_job
from ift.experiment.config import LoggerConfig
from ift.experiment.tracking import Tracker, run_id

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_server(monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the mode the code asks for, not the test suite's offline
    return url


def test_sync_with_the_server_unreachable_gives_up_at_once_and_says_so(tmp_path, no_server, monkeypatch, capsys):
    offline_run(tmp_path / "outputs", "abc")
    monkeypatch.setattr(sync.subprocess, "run", lambda *a, **k: pytest.fail("wandb sync was started"))
    start = time.monotonic()
    assert sync.main([str(tmp_path / "outputs"), "--timeout", "2"]) == 1
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"the wandb server {no_server} cannot be reached" in err and "nothing synced; 1 run(s) wait offline" in err


def test_sync_gives_each_run_a_time_limit_and_says_what_it_could_not_sync(tmp_path, monkeypatch, capsys):
    good, slow = offline_run(tmp_path / "a", "good"), offline_run(tmp_path / "b", "slow")
    monkeypatch.setattr(sync, "unreachable", lambda url, timeout: None)

    def wandb_sync(cmd, timeout):
        if str(slow) in cmd:
            raise subprocess.TimeoutExpired(cmd, timeout)
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(sync.subprocess, "run", wandb_sync)
    assert sync.main([str(tmp_path), "--run-timeout", "5"]) == 1
    out = capsys.readouterr()
    assert f"synced  good  {good}" in out.out and "synced 1 of 2 run(s); could not sync 1:" in out.out
    assert f"not synced  slow  {slow}  (no answer within 5 s)" in out.err


@pytest.mark.slow
def test_logging_online_without_a_server_falls_back_to_offline_under_the_same_run_id(tmp_path, no_server, caplog):
    cfg = LoggerConfig(mode="online", init_timeout=3)
    with caplog.at_level("WARNING"):
        tracker = Tracker(cfg, tmp_path, "fallback", {"task": "demo"}, run_id="fallback0123456")
    assert tracker.active and "wandb could not start online" in caplog.text and "logging offline instead" in caplog.text
    tracker.log_step({"step": 1, "acc": 0.5})
    tracker.finish({"icl_acc": 0.5}, "finished")
    (path,) = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run = read_run(path)
    assert path.name.endswith("-fallback0123456") and run.summary["status"] == "finished"
    assert [r["acc"] for r in run.history if "acc" in r] == [0.5]


def test_a_jobs_wandb_copy_is_rebuilt_from_the_store(tiny_dir, tmp_path, no_server, capsys):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=hf", f"model.source={tiny_dir}", "logger=disabled", "optim.T=2",
                                           "eval.progress=false", f"results_dir={tmp_path / 'r'}"])
    store = Path(run_job(cfg)["store"])
    assert sync.main(["--from-store", str(store), "--timeout", "2"]) == 1  # rebuilt, then no server to sync to
    out = capsys.readouterr()
    (path,) = sorted((store / "wandb").glob("offline-run-*"))
    assert f"rebuilt the wandb run of {store} from the store: {path}" in out.out and "cannot be reached" in out.err
    run = read_run(path)
    assert path.name.endswith(f"-{run_id(store)}")  # the job's own run: syncing it fills the job's run
    assert sorted(r["step"] for r in run.history if "acc" in r) == [1, 2]
    assert run.summary["status"] == "finished" and run.exit_code == 0
