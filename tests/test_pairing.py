"""A low-precision job refuses to run beside its seed's runs made on another kind of machine (they would not pair
on a page: ift/experiment/pairing.py), before its model loads; fp32 runs anywhere; the check can be turned off."""
import json
import shutil
from pathlib import Path

import pytest

from ift.experiment import run_job
from ift.experiment.config import ConfigError
from ift.experiment.job import prepare
from ift.experiment.job_plan import dry_run
from ift.experiment.pairing import machine_kind
from jobs import job_cfg

pytestmark = pytest.mark.usefixtures("fresh_model_cache")

AMD = {"cpu": "AMD EPYC", "cpu_amx": False}


def test_the_kind_is_the_gpu_or_the_cpu_with_or_without_amx():
    assert machine_kind(AMD, "cpu") == "AMD EPYC without AMX"
    assert machine_kind({"cpu": "Intel Xeon", "cpu_amx": True}, "cpu") == "Intel Xeon with AMX"
    assert machine_kind({"gpu": "NVIDIA H100", "cpu": "x", "cpu_amx": True}, "cuda") == "GPU NVIDIA H100"
    assert machine_kind({"python": "3.11"}, "cpu") is None  # older runs did not record it: never a refusal


def made_on(store: Path, versions: dict) -> None:
    """Rewrite a finished run's meta.json as if it had been made on another machine."""
    meta_file = store / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "versions": {**meta["versions"], **versions}}))


def test_a_bf16_mixed_job_beside_runs_from_another_kind_is_refused_before_it_loads(tiny_dir, tmp_path, monkeypatch):
    results = tmp_path / "results"
    icl = run_job(job_cfg(tiny_dir, results, "quant=bf16_mixed", "method=zero_shot", "seed=3"))
    made_on(Path(icl["store"]), AMD)
    here = "Intel Xeon with AMX"
    monkeypatch.setattr("ift.experiment.pairing.kind_here", lambda device: here)
    loads = []
    monkeypatch.setattr("ift.experiment.job.load_model_once", lambda *a, **k: loads.append(a))
    cfg = job_cfg(tiny_dir, results, "quant=bf16_mixed", "optim.T=2", "seed=3")
    with pytest.raises(ConfigError, match=r"demo seed 3: this job would run in bf16-mixed on Intel Xeon with AMX, "
                                          r"but the 1 bf16-mixed run\(s\) of this seed .* \(AMD EPYC without AMX: 1\)"
                                          r".*check_machine_kind=false runs it anyway"):
        run_job(cfg)
    assert loads == [] and len(list(results.rglob("meta.json"))) == 1  # no model loaded, nothing new stored
    planned = dry_run(prepare(cfg).job)
    assert planned["action"] == "refuse" and "AMD EPYC without AMX" in planned["plan"]
    # another seed, fp32, or a machine of the runs' own kind: nothing to pair against, or it pairs
    for ok, kind in ((job_cfg(tiny_dir, results, "quant=bf16_mixed", "optim.T=2", "seed=4"), here),
                     (job_cfg(tiny_dir, results, "optim.T=2", "seed=3"), here),
                     (cfg, "AMD EPYC without AMX")):
        monkeypatch.setattr("ift.experiment.pairing.kind_here", lambda device, kind=kind: kind)
        assert dry_run(prepare(ok).job)["action"] == "run"


def test_the_check_can_be_turned_off_and_ignores_runs_that_never_ended(tiny_dir, tmp_path, monkeypatch):
    results = tmp_path / "results"
    first = run_job(job_cfg(tiny_dir, results, "quant=bf16_mixed", "method=zero_shot"))
    made_on(Path(first["store"]), AMD)
    monkeypatch.setattr("ift.experiment.pairing.kind_here", lambda device: "Intel Xeon with AMX")
    off = run_job(job_cfg(tiny_dir, results, "quant=bf16_mixed", "optim.T=2", "check_machine_kind=false"))
    assert off["status"] == "finished"
    shutil.rmtree(off["store"])
    (Path(first["store"]) / "summary.json").unlink()  # a killed attempt of another arm is not a run to pair with
    assert dry_run(prepare(job_cfg(tiny_dir, results, "quant=bf16_mixed", "optim.T=2")).job)["action"] == "run"


def test_a_config_that_is_not_a_boolean_is_refused(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="check_machine_kind must be true or false"):
        prepare(job_cfg(tiny_dir, tmp_path, "check_machine_kind=maybe"))
