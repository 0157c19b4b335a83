"""Real SLURM sweeps through Hydra's submitit launcher: `python launch.py -m hydra/launcher=submitit_slurm ...`.

Needs a running cluster: `bash scripts/slurm/start-local-slurm.sh` (root, Debian; a one-node cluster with
accounting) and IFT_SLURM=1 — scripts/test.sh does both. Every test launches the real command line as a
subprocess in a fresh directory, with a unique SLURM job name so that whatever it leaves behind can be
cancelled (`scancel --name`), and prints the launcher's output, the jobs' submitit logs and the queue
when it fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mirror import needs_mirror

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("IFT_SLURM") != "1",
                       reason="needs a running SLURM cluster and IFT_SLURM=1 "
                              "(scripts/slurm/start-local-slurm.sh; scripts/test.sh does both)"),
]

ROOT = Path(__file__).resolve().parents[1]
SLURM_LOGS = Path("/var/log/slurm-local")  # where start-local-slurm.sh's daemons log
SWEEP_TIMEOUT_S = 150    # one launcher run (submission, both jobs, collection)
PREEMPT_TIMEOUT_S = 170  # the preemption test, all of it
PREEMPT_T = 400          # ~0.05 s a step on the tiny model with one thread: ~20-30 s of tuning


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import save_tiny_model

    path = tmp_path_factory.mktemp("slurm-model") / "tiny-llama"
    save_tiny_model(path, "llama")
    return path


def job_env() -> dict:
    env = dict(os.environ)
    # sbatch exports the environment to the job. One torch thread per job: the node's 2 cores run both jobs
    # of the sweep at once, and torch's default (a thread per core per job) makes every step ~10x slower.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("IFT_RESULTS_DIR", None)
    return env


def launch_cmd(model: Path, work: Path, sweep: str, name: str, *overrides: str,
               launcher=("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10")) -> list[str]:
    return [sys.executable, "launch.py", "-m", *launcher, f"hydra.launcher.name={name}",
            "model=hf", f"model.source={model}", "task=demo", "logger=disabled", "eval.progress=false",
            f"results_dir={work / 'results'}", f"hydra.sweep.dir={work / sweep}", *overrides]


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def _run(*cmd: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"({' '.join(cmd)}: {err})"


def diagnostics(work: Path, name: str, stdout: str = "", stderr: str = "") -> str:
    """Everything useful when a SLURM test fails: launcher output, reports, job logs, queue, accounting."""
    parts = [f"--- launcher stdout (tail)\n{_tail(stdout)}", f"--- launcher stderr (tail)\n{_tail(stderr)}"]
    for path in sorted(work.glob("*/sweep_report.txt")) + sorted(work.glob("*/*/job.json")):
        parts.append(f"--- {path}\n{path.read_text()}")
    for path in sorted(work.glob("results/*/*/*/meta.json")):
        meta = json.loads(path.read_text())
        rows = (path.parent / "steps.jsonl").read_text().count("\n") if (path.parent / "steps.jsonl").exists() else 0
        parts.append(f"--- {path}: status={meta.get('status')} attempts={meta.get('attempts')} "
                     f"slurm_job_id={meta.get('slurm_job_id')} error={meta.get('error')} steps={rows}")
    for path in sorted(work.glob("*/.submitit/*/*_log.*")):
        parts.append(f"--- {path} (tail)\n{_tail(path.read_text(errors='replace'), 25)}")
    parts.append(f"--- squeue\n{_run('squeue', '-a')}")
    parts.append(f"--- sacct --name={name}\n{_run('sacct', '-a', '-D', f'--name={name}')}")
    for log in ("slurmctld.log", "slurmd.log"):
        if (SLURM_LOGS / log).exists():
            parts.append(f"--- {SLURM_LOGS / log} (tail)\n{_tail((SLURM_LOGS / log).read_text(errors='replace'), 15)}")
    return "\n".join(parts)


def cancel(name: str) -> None:
    """Cancel this test's jobs (by their unique job name), whatever state it left them in."""
    _run("scancel", f"--name={name}")


def run_sweep(cmd: list[str], work: Path, name: str, timeout: float = SWEEP_TIMEOUT_S):
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        cancel(name)
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        errs = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        pytest.fail(f"launcher still running after {timeout:.0f}s\n{diagnostics(work, name, out, errs)}")
    print(f"{' '.join(cmd[1:])}\n-> exit {proc.returncode} in {time.monotonic() - start:.1f}s")
    if proc.returncode != 0:
        cancel(name)
        pytest.fail(f"launcher exited {proc.returncode}\n{diagnostics(work, name, proc.stdout, proc.stderr)}")
    return proc


def sacct_states(*args: str, until=lambda states: True, timeout: float = 15) -> list[str]:
    """Job states from accounting, polled until `until(states)`: slurmdbd records a job's end a moment
    after the job (and submitit, which reads the result file) is done."""
    end = time.monotonic() + timeout
    while True:
        states = _run("sacct", "-a", "-n", "-P", "-o", "State", *args).split()
        if until(states) or time.monotonic() > end:
            return states
        time.sleep(0.5)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def job_records(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/job.json"))]


def test_slurm_tools_are_on_path():
    """IFT_SLURM=1 promises a cluster: say so plainly when the client tools are missing."""
    missing = [tool for tool in ("sbatch", "squeue", "sacct", "scancel", "scontrol") if shutil.which(tool) is None]
    assert not missing, f"IFT_SLURM=1 but {missing} not on PATH"


# ---------------------------------------------------------------- a 2-job sweep, then the same sweep again

@pytest.fixture(scope="module")
def finished_sweep(model_dir, tmp_path_factory):
    """optim.eta=0.1,0.01 with T=3 on the tiny model, run once on SLURM; shared by the tests below."""
    work = tmp_path_factory.mktemp("slurm-sweep")
    name = f"ift-test-{uuid.uuid4().hex[:8]}"
    cmd = launch_cmd(model_dir, work, "sweep", name, "optim.T=3", "optim.eta=0.1,0.01")
    proc = run_sweep(cmd, work, name)
    yield {"work": work, "name": name, "model": model_dir, "proc": proc}
    cancel(name)


def test_sweep_runs_both_jobs_on_slurm(finished_sweep):
    work, name, proc = finished_sweep["work"], finished_sweep["name"], finished_sweep["proc"]
    why = diagnostics(work, name, proc.stdout, proc.stderr)
    sweep = work / "sweep"
    records = job_records(sweep)
    assert len(records) == 2, why
    assert {r["status"] for r in records} == {"finished"}, why
    assert not any(r["skipped"] for r in records), why
    stores = sorted(Path(r["store"]) for r in records)
    assert len(set(stores)) == 2 and all(s.parent.parent.parent == work / "results" for s in stores), why
    job_ids = set()
    for store in stores:
        meta = json.loads((store / "meta.json").read_text())
        assert meta["status"] == "finished", why
        assert meta["slurm_job_id"], f"{store}: not run by SLURM?\n{why}"
        assert meta["attempts"] == 1, why
        job_ids.add(meta["slurm_job_id"])
        assert [r["step"] for r in read_rows(store / "steps.jsonl")] == [1, 2, 3], why
        summary = json.loads((store / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["last_step"] == 3, why
    assert len(job_ids) == 2, f"both jobs report SLURM job {job_ids}\n{why}"
    assert {json.loads((s / "meta.json").read_text())["eta"] for s in stores} == {0.1, 0.01}, why
    # submitit's own records: the sbatch script and one stdout/stderr pair per job
    submitit = sweep / ".submitit"
    scripts = list(submitit.glob("*/*_submission.sh"))
    assert scripts and "#SBATCH --job-name=" + name in scripts[0].read_text(), why
    logs = list(submitit.glob("*/*_log.out"))
    assert len(logs) == 2 and len(list(submitit.glob("*/*_log.err"))) == 2, why
    assert all("Job completed successfully" in p.read_text() for p in logs), why
    assert "2 job(s), 0 failed" in (sweep / "sweep_report.txt").read_text(), why
    # accounting saw both jobs end (submitit relies on sacct for jobs that die without a result)
    states = sacct_states("-X", f"--name={name}", until=lambda s: s == ["COMPLETED", "COMPLETED"])
    assert states == ["COMPLETED", "COMPLETED"], f"sacct states {states}\n{why}"


@pytest.mark.parametrize("launcher", [
    ("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10"),
    # the project's preset (conf/hydra/launcher/slurm.yaml), sized for this CPU-only node
    ("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
     "hydra.launcher.mem_gb=1"),
], ids=["submitit_slurm", "project_preset"])
def test_running_the_sweep_again_skips_finished_jobs(finished_sweep, launcher):
    work, model = finished_sweep["work"], finished_sweep["model"]
    name = f"ift-test-{uuid.uuid4().hex[:8]}"
    before = {p: p.stat().st_mtime_ns for p in work.glob("results/*/*/*/*")}
    sweep = f"again-{launcher[0].split('=')[1]}"  # a new sweep dir: a reused submitit folder can mix up jobs
    cmd = launch_cmd(model, work, sweep, name, "optim.T=3", "optim.eta=0.1,0.01", launcher=launcher)
    proc = run_sweep(cmd, work, name)
    why = diagnostics(work, name, proc.stdout, proc.stderr)
    records = job_records(work / sweep)
    assert len(records) == 2, why
    assert all(r["status"] == "finished" and r["skipped"] is True for r in records), why
    assert sorted(r["store"] for r in records) == sorted(r["store"] for r in job_records(work / "sweep")), why
    assert "already finished: skipped" in (work / sweep / "sweep_report.txt").read_text(), why
    after = {p: p.stat().st_mtime_ns for p in work.glob("results/*/*/*/*")}
    assert after == before, f"a skipped job touched the store\n{why}"
    cancel(name)


# ---------------------------------------------------------------- preemption: SIGUSR2, checkpoint, requeue, resume

def test_a_preempted_job_is_requeued_and_resumes_from_its_last_step(model_dir, tmp_path):
    """SLURM preemption as submitit sees it: SIGUSR2 to the job step. submitit calls the Hydra launcher's
    `checkpoint` (resubmit the same job), requeues the job (`scontrol requeue`), and the job, started
    again under the same SLURM id, resumes from its last checkpointed step (ift/experiment/job.py)."""
    work, name, T = tmp_path, f"ift-test-{uuid.uuid4().hex[:8]}", PREEMPT_T
    # timeout_min=60: submitit calls a signal a *timeout* (not a preemption) once the job has run
    # min(80% of its time, time - 10 min); with timeout_min=10 that is from the first second, and the
    # plugin's max_num_timeout=0 would then end the job instead of requeueing it.
    cmd = launch_cmd(model_dir, work, "sweep", name, f"optim.T={T}", "optim.eta=0.01",
                     launcher=("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=60"))
    start = time.monotonic()
    deadline = start + PREEMPT_TIMEOUT_S
    out_path, err_path = work / "launcher.out", work / "launcher.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        launcher = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=out, stderr=err)

    def fail(msg: str):
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
        cancel(name)
        pytest.fail(f"{msg} ({time.monotonic() - start:.0f}s in)\n"
                    f"{diagnostics(work, name, out_path.read_text(), err_path.read_text())}")

    try:
        # 1. wait until the job has finished (and checkpointed) a few steps
        steps = None
        while True:
            found = list(work.glob("results/*/*/*/steps.jsonl"))
            if found and len(read_rows(found[0])) >= 3:
                steps = found[0]
                break
            if launcher.poll() is not None:
                fail(f"launcher exited {launcher.returncode} before the job had 3 steps")
            if time.monotonic() > deadline - 90:
                fail("the job did not reach step 3")
            time.sleep(0.2)
        store = steps.parent
        job_id = json.loads((store / "meta.json").read_text())["slurm_job_id"]
        n_before = len(read_rows(steps))
        t_signal = time.monotonic()
        print(f"job {job_id} at step {n_before} after {t_signal - start:.1f}s: preempting it")
        if n_before >= T:
            fail(f"the job finished all {T} steps before it could be preempted: raise PREEMPT_T")

        # 2. preempt it: SIGUSR2 to the job's steps, as `#SBATCH --signal=USR2@...` delivers it (without
        #    --batch: that would signal only the batch shell, which does not pass it on to srun's step)
        sig = subprocess.run(["scancel", "--signal=USR2", str(job_id)], capture_output=True, text=True, timeout=20)
        if sig.returncode != 0:
            fail(f"scancel --signal=USR2 {job_id} failed: {sig.stdout}{sig.stderr}")

        # 3. the launcher collects the requeued job's result
        try:
            rc = launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            fail(f"launcher still running {PREEMPT_TIMEOUT_S}s after it started")
        print(f"launcher exited {rc} after {time.monotonic() - start:.1f}s "
              f"({time.monotonic() - t_signal:.1f}s after the signal)")
        if rc != 0:
            fail(f"launcher exited {rc}")
    except BaseException:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
        cancel(name)
        raise

    why = diagnostics(work, name, out_path.read_text(), err_path.read_text())
    meta = json.loads((store / "meta.json").read_text())
    assert meta["status"] == "finished", why
    assert meta["attempts"] >= 2, f"the job was not started again\n{why}"
    assert meta["slurm_job_id"] == job_id, f"requeued under a new id?\n{why}"
    assert [r["step"] for r in read_rows(steps)] == list(range(1, T + 1)), f"steps lost or repeated\n{why}"
    assert json.loads((store / "summary.json").read_text())["last_step"] == T, why
    records = job_records(work / "sweep")
    assert len(records) == 1 and records[0]["status"] == "finished" and not records[0]["skipped"], why
    log = "".join(p.read_text(errors="replace") for p in (work / "sweep" / ".submitit").glob("*/*_log.out"))
    assert "this job is preempted" in log and f"Requeued job {job_id}" in log, why
    assert "resuming from step" in log, f"the job started again from step 1\n{why}"
    states = sacct_states("-D", "-X", "-j", str(job_id), until=lambda s: s == ["REQUEUED", "COMPLETED"])
    assert "REQUEUED" in states, f"sacct states {states}\n{why}"



# ---------------------------------------------------------------- a study preset on SLURM, and its page

@needs_mirror("sst2")
def test_the_quick_study_runs_on_slurm_and_builds_its_page(tmp_path):
    """`python -m analysis.studies run quick hydra/launcher=slurm`: the study preset's jobs as one SLURM job array
    (its SST-2 part, hydra.sweeper.tasks, on seed 0: one job per arm, 6), then the archive and the page, by the one command a login node runs."""
    name = f"ift-test-{uuid.uuid4().hex[:8]}"
    out, results, sweep = tmp_path / "page", tmp_path / "results", tmp_path / "sweep"
    cmd = [sys.executable, "-m", "analysis.studies", "run", "quick", "--out", str(out), "hydra/launcher=slurm",
           "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
           "hydra.launcher.timeout_min=20", f"hydra.launcher.name={name}", "hydra.sweeper.tasks=[sst2]", "seed=0",
           f"results_dir={results}", f"hydra.sweep.dir={sweep}"]
    proc = run_sweep(cmd, tmp_path, name, timeout=900)
    why = diagnostics(tmp_path, name, proc.stdout, proc.stderr)
    records = job_records(sweep)
    assert len(records) == 6 and {r["status"] for r in records} == {"finished"}, why
    ids = {json.loads((Path(r["store"]) / "meta.json").read_text())["slurm_job_id"] for r in records}
    assert len(ids) == 6 and all(ids), f"not one SLURM job each: {ids}\n{why}"
    assert (out / "runs.tar.gz").is_file() and (out / "study.md").is_file(), why
    assert "python -m analysis.studies run quick" in (out / "README.md").read_text()
    cancel(name)
