"""The studies are Hydra presets: they compose, they expand into the jobs their YAML declares, in order, and a
composed job is what launch.py would run (conf/experiment/study/, ift/experiment/study_plan.py,
hydra_plugins/ift_study/, analysis/studies.py). The committed archives' store keys against each plan: tests/test_studies_archives.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mirror import DATA, needs_mirror
from omegaconf import OmegaConf

import ift.experiment.config  # noqa: F401 - registers the typed nodes conf/ composes with
from analysis import studies
from ift.experiment.study_plan import StudyError, expand_sweep, merge, plan, product

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


# ---------------------------------------------------------------- the sweeper's expansion, by hand

GROUPS = {"a": {"task": "sst2", "n_shot": 1, "seed": "0,1"}, "b": {"task": "copa", "n_shot": 4, "seed": 7}}


def test_a_product_varies_its_first_key_slowest_and_keeps_prefixes():
    assert product(["x=1,2", "++y=range(0,2)"]) == [["x=1", "++y=0"], ["x=1", "++y=1"],
                                                    ["x=2", "++y=0"], ["x=2", "++y=1"]]


def test_a_group_expands_its_own_settings_in_its_place():
    sweep = {"name": "s", "params": {"arm": "zero_shot,ift_default", "group": "a,b"}}
    assert expand_sweep(sweep, GROUPS) == [
        ["arm=zero_shot", "task=sst2", "n_shot=1", "seed=0"], ["arm=zero_shot", "task=sst2", "n_shot=1", "seed=1"],
        ["arm=zero_shot", "task=copa", "n_shot=4", "seed=7"],
        ["arm=ift_default", "task=sst2", "n_shot=1", "seed=0"], ["arm=ift_default", "task=sst2", "n_shot=1", "seed=1"],
        ["arm=ift_default", "task=copa", "n_shot=4", "seed=7"]]


def test_the_command_line_wins_applies_to_every_job_and_duplicates_run_once():
    sweeps = [{"name": "first", "params": {"group": "a", "arm": "zero_shot"}},
              {"name": "second", "params": {"group": "a,b", "arm": "zero_shot"}}]
    out = plan(sweeps, GROUPS, ["seed=3", "model=gpt2"])
    # seed=3 replaces every job's seed in its place: sst2's two seeds become one job, planned by the first sweep
    assert out == [("first", [["task=sst2", "n_shot=1", "seed=3", "arm=zero_shot", "model=gpt2"]]),
                   ("second", [["task=copa", "n_shot=4", "seed=3", "arm=zero_shot", "model=gpt2"]])]
    # a sweep on the command line multiplies every job
    assert [len(jobs) for _, jobs in plan(sweeps, GROUPS, ["model=a,b"])] == [2 * 2, 1 * 2]


def test_tasks_keeps_only_those_tasks_jobs():
    out = plan([{"name": "s", "params": {"group": "a,b", "arm": "x"}}], GROUPS, tasks=["copa"])
    assert out == [("s", [["task=copa", "n_shot=4", "seed=7", "arm=x"]])]


def test_arms_keeps_only_those_arms_jobs_in_the_sweeps_that_declare_them():
    sweeps = [{"name": "reused", "params": {"group": "a", "arm": "x,y"}}, {"name": "controls", "params": {"group": "a,b", "arm": "z"}}]
    out = plan(sweeps, GROUPS, arms=["z"])
    assert out == [("reused", []), ("controls", [["task=sst2", "n_shot=1", "seed=0", "arm=z"],
                                                 ["task=sst2", "n_shot=1", "seed=1", "arm=z"],
                                                 ["task=copa", "n_shot=4", "seed=7", "arm=z"]])]
    assert [len(jobs) for _, jobs in plan(sweeps, GROUPS, tasks=["copa"], arms=["y", "z"])] == [0, 1]


def test_narrowing_a_study_to_an_arm_or_task_it_does_not_plan_names_what_it_plans():
    sweeps = [{"name": "s", "params": {"group": "a,b", "arm": "x,y"}}]
    with pytest.raises(StudyError, match=r"hydra.sweeper.arms: \['dev_demos'\] not in this study's plan; its arms: \['x', 'y'\]"):
        plan(sweeps, GROUPS, arms=["x", "dev_demos"])
    with pytest.raises(StudyError, match=r"hydra.sweeper.tasks: \['mr'\] not in this study's plan; its tasks: \['copa', 'sst2'\]"):
        plan(sweeps, GROUPS, tasks=["mr"])


def test_the_sweeper_hands_each_named_sweep_to_the_launcher_as_its_own_batches():
    from hydra_plugins.ift_study.study_sweeper import StudySweeper

    sweeps = [{"name": "T8", "params": {"group": "a,b", "arm": "x"}},
              {"name": "T15", "params": {"group": "a", "arm": "y"}}, {"name": "none", "params": {"group": "b", "arm": "z"}}]
    sweeper = StudySweeper(sweeps, GROUPS, max_batch_size=2, tasks=["sst2"], title="t", page=None)
    assert [(name, len(jobs)) for name, jobs in sweeper.batches([])] == [("T8", 2), ("T15", 2)]
    sweeper = StudySweeper(sweeps, GROUPS)
    assert [(name, len(jobs)) for name, jobs in sweeper.batches([])] == [("T8", 3), ("T15", 2), ("none", 1)]


def test_merge_replaces_a_key_in_its_place_whatever_its_prefix():
    assert merge(["a=1", "++m.r=4", "b=2"], ["+m.r=3", "a=9"]) == ["a=9", "+m.r=3", "b=2"]


def test_a_bad_study_says_what_is_wrong():
    with pytest.raises(StudyError, match=r"group\(s\) \['c'\] not in the study's groups: \['a', 'b'\]"):
        expand_sweep({"name": "s", "params": {"group": "a,c"}}, GROUPS)
    with pytest.raises(StudyError, match="sweep 'empty' has no params"):
        expand_sweep({"name": "empty"}, GROUPS)
    with pytest.raises(SystemExit, match="study 'nope' is not one of: .*nine_fp32"):
        studies.declaration("nope")


# ---------------------------------------------------------------- arms

@pytest.mark.parametrize("arm, method, optim", [
    ("ift_default", {"name": "ift"}, {"eta": 0.1, "beta": 0.9, "T": 8, "position_mode": "aligned"}),
    ("ift_default_T15", {"name": "ift"}, {"eta": 0.1, "beta": 0.9, "T": 15, "position_mode": "aligned"}),
    ("ift_continue", {"name": "ift"}, {"eta": 0.1, "T": 8, "position_mode": "continue"}),
    ("ift_paper", {"name": "ift"}, {"eta": 0.01, "beta": 0.9, "T": 15, "position_mode": "continue"}),
    ("ift_paper_T8", {"name": "ift"}, {"eta": 0.01, "T": 8, "position_mode": "continue"}),
    ("ift_eta0.01", {"name": "ift"}, {"eta": 0.01, "T": 8, "position_mode": "aligned"}),
    ("ift_eta0.01_T15", {"name": "ift"}, {"eta": 0.01, "T": 15, "position_mode": "aligned"}),
    ("ift_eta0.001_T15", {"name": "ift"}, {"eta": 0.001, "T": 15, "position_mode": "aligned"}),
    ("beta0", {"name": "ift"}, {"eta": 0.1, "beta": 0.0, "T": 8, "position_mode": "aligned"}),
    ("zero_shot", {"name": "zero_shot"}, {}),
    ("grad", {"name": "grad", "lr": 0.001}, {"T": 8}),
    ("grad_lr0.01", {"name": "grad", "lr": 0.01}, {"T": 5}),
    ("repeat4", {"name": "repeat", "max_repeats": 4}, {}),
    ("more_demos3", {"name": "more_demos", "max_factor": 3}, {}),
    # issue 42's controls and the candidate-matched grids (8: SmolLM2's IFT candidates, 29: Gemma's)
    ("random_direction", {"name": "random_direction"}, {"eta": 0.1, "beta": 0.9, "T": 8, "position_mode": "aligned"}),
    ("random_direction_T15", {"name": "random_direction"}, {"eta": 0.1, "T": 15, "position_mode": "aligned"}),
    ("random_direction_paper", {"name": "random_direction"}, {"eta": 0.01, "T": 15, "position_mode": "continue"}),
    ("fixed_direction", {"name": "fixed_direction"}, {"eta": 0.1, "beta": 0.9, "T": 8, "position_mode": "aligned"}),
    ("fixed_direction_T15", {"name": "fixed_direction"}, {"eta": 0.1, "T": 15, "position_mode": "aligned"}),
    ("fixed_direction_paper", {"name": "fixed_direction"}, {"eta": 0.01, "T": 15, "position_mode": "continue"}),
    ("dev_demos8", {"name": "dev_demos", "draws": 8}, {}),
    ("dev_demos29", {"name": "dev_demos", "draws": 29}, {}),
    ("calibrate", {"name": "calibrate"}, {}),
    ("repeat8", {"name": "repeat", "max_repeats": 8}, {}),
    ("repeat29", {"name": "repeat", "max_repeats": 29}, {}),
    ("grad_lr0.01_T8", {"name": "grad", "lr": 0.01}, {"T": 8}),
    ("grad_lr0.01_T29", {"name": "grad", "lr": 0.01}, {"T": 29}),
])
def test_an_arm_is_one_name_for_a_method_and_its_settings(hydra_conf, arm, method, optim):
    cfg = compose("config", overrides=[f"arm={arm}"])
    assert OmegaConf.to_container(cfg.method).items() >= method.items()
    assert OmegaConf.to_container(cfg.optim).items() >= optim.items()


def test_the_arms_are_the_files_under_conf_arm():
    # an arm the test above does not pin would change a study's keys unnoticed
    assert {p.stem for p in (CONF / "arm").glob("*.yaml")} == {
        "ift_default", "ift_default_T15", "ift_continue", "ift_paper", "ift_paper_T8", "ift_eta0.01", "ift_eta0.01_T15",
        "ift_eta0.001_T15", "beta0", "zero_shot", "grad", "grad_lr0.01", "repeat4", "more_demos3",
        "random_direction", "random_direction_T15", "random_direction_paper", "fixed_direction",
        "fixed_direction_T15", "fixed_direction_paper", "dev_demos8", "dev_demos29", "calibrate",
        "repeat8", "repeat29", "grad_lr0.01_T8", "grad_lr0.01_T29"}


# ---------------------------------------------------------------- every preset

@pytest.mark.parametrize("name", studies.names())
def test_every_study_composes_and_plans_valid_jobs(hydra_conf, name):
    study = studies.declaration(name)
    assert study["_target_"] == "hydra_plugins.ift_study.study_sweeper.StudySweeper"
    assert study["title"] and study["sweeps"]
    jobs = studies.jobs(name)
    assert jobs and len({tuple(sorted(j)) for _, j in jobs}) == len(jobs)
    for _, job in jobs:
        keys = {line.split("=", 1)[0].lstrip("+") for line in job}
        assert {"task", "seed", "n_shot"} <= keys and keys & {"arm", "method"}, job
    # the first job of each named sweep composes in full, as launch.py composes it
    firsts = {sweep: job for sweep, job in reversed(jobs)}
    for job in firsts.values():
        cfg = compose("config", overrides=[f"experiment=study/{name}", *job], return_hydra_config=True)
        values = dict(line.lstrip("+").split("=", 1) for line in job)
        choices = cfg.hydra.runtime.choices
        assert choices.arm == values["arm"] if "arm" in values else choices.method == values["method"]
        assert str(cfg.seed) == values["seed"] and cfg.task.name == values["task"]


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides", [("quick", []), ("gemma_agnews", ["quant=bf16_mixed"]), ("pilot", [])])
def test_a_job_composed_in_one_piece_equals_the_quick_path(hydra_conf, name, overrides):
    """analysis.studies.job_configs composes once per arm and task and sets the rest (++, + and plain keys): the
    same config as composing the job in full."""
    for i, (job, fast) in enumerate(studies.job_configs(name, overrides)):
        if i % 5:
            continue
        full = compose("config", overrides=[f"experiment=study/{name}", *job])
        assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(full, resolve=True), job


def test_the_page_settings_of_the_committed_pages(hydra_conf):
    """Each page with an archive is one study's (the one whose plan tests/test_studies_archives.py checks)."""
    pages = {studies.declaration(n)["page"]: n for n in studies.names() if studies.declaration(n)["page"]}
    committed = {f"docs/results/{p.parent.name}" for p in (ROOT / "docs" / "results").glob("*/runs.tar.gz")}
    assert committed <= set(pages), committed - set(pages)
    for page in committed:
        title = (ROOT / page / "study.md").read_text().splitlines()[0].removeprefix("# ")
        study = studies.declaration(pages[page])
        assert study["title"] == title, page


def test_gemma_seeds_is_gemma_with_its_seed_lists(hydra_conf):
    seeds = {}
    for _, job in studies.jobs("gemma_seeds"):
        values = dict(line.lstrip("+").split("=", 1) for line in job)
        seeds.setdefault(values["task"], set()).add(int(values["seed"]))
    assert seeds["sst2"] == set(range(67)) and seeds["mr"] == set(range(48))
    assert seeds["copa"] == seeds["winogrande"] == set(range(8))
    assert seeds["trec"] == seeds["hellaswag"] == set(range(5))
    gemma = {tuple(j) for _, j in studies.jobs("gemma")}
    assert gemma < {tuple(j) for _, j in studies.jobs("gemma_seeds")}


def test_the_plan_text_names_the_seeds_per_task(hydra_conf):
    text = studies.plan_text("gemma_seeds")
    assert "python -m analysis.studies run gemma_seeds" in text
    assert "sst2        ift_default       seeds 0-66" in text
    assert "hellaswag   zero_shot         seeds 0-4" in text
    assert "hellaswag   ift_default" not in text  # zero-shot only on Gemma's HellaSwag


# ---------------------------------------------------------------- the one command, dry-run, a user's model

@pytest.mark.slow
@needs_mirror("sst2", "agnews")
@pytest.mark.parametrize("name, n_jobs", [("quick", 24), ("gemma_agnews", 20)])
def test_a_study_dry_runs_on_a_users_model(tmp_path, name, n_jobs):
    """`python launch.py -m experiment=study/<name> model=hf model.source=<dir> dry_run=true`: every job planned,
    nothing computed or written to the store."""
    from tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "my-model", "llama")
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "launch.py", "-m", f"experiment=study/{name}", "model=hf",
                           f"model.source={model}", "dry_run=true", f"results_dir={tmp_path / 'results'}",
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "IFT_DATA_DIR": str(DATA), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (sweep / "sweep_report.txt").read_text()
    assert f"{n_jobs} job(s), 0 failed (dry run: {n_jobs} of {n_jobs} would compute)" in report
    assert report.count("[planned, run:") == n_jobs
    assert not (tmp_path / "results").exists()


def test_each_committed_page_says_the_command_that_reproduces_it(hydra_conf):
    """README.md beside a page names its study and prints the current plan (python -m analysis.studies page
    writes it); a preset edited without rewriting it fails here."""
    for archive in sorted((ROOT / "docs" / "results").glob("*/runs.tar.gz")):
        readme = (archive.parent / "README.md").read_text()
        name = readme.split("python -m analysis.studies run ", 1)[1].split()[0]
        assert studies.declaration(name)["page"] == f"docs/results/{archive.parent.name}"
        assert readme == studies.readme(name), archive.parent.name


# ---------------------------------------------------------------- issue 42's controls: candidate-matched

@pytest.mark.parametrize("name, ift_candidates", [("controls_smollm2", 8), ("controls_gemma", 29)])
def test_every_control_offers_the_dev_rows_as_many_candidates_as_ift(hydra_conf, name, ift_candidates):
    """IFT's candidates are its settings' steps with step 1 (ICL) shared; each control declared in the preset
    offers as many (calibration: 2, zero-shot: 1), on every task and seed the plan holds, seeds 0-39."""
    steps: dict[tuple[str, str], set[int]] = {}
    seeds: dict[tuple[str, str], set[int]] = {}
    sweep_of = {tuple(job): sweep for sweep, job in studies.jobs(name)}
    for job, cfg in studies.job_configs(name):
        values = dict(line.lstrip("+").split("=", 1) for line in job)
        method = cfg.method.name
        if sweep_of[tuple(job)] == "reused" and method not in ("ift", "zero_shot"):
            continue  # the earlier study's own baselines (repetition r <= 4, ...), shown beside the matched ones
        n = {"ift": cfg.optim.T, "random_direction": cfg.optim.T, "dev_demos": cfg.method.get("draws"),
             "repeat": cfg.method.get("max_repeats"), "grad": cfg.optim.T, "calibrate": 2, "zero_shot": 1}[method]
        steps.setdefault((values["task"], method), set()).add((cfg.optim.position_mode, cfg.optim.eta, n))
        seeds.setdefault((values["task"], values["arm"]), set()).add(int(values["seed"]))
    assert all(s == set(range(40)) for s in seeds.values()), seeds
    for (task, method), settings in steps.items():
        candidates = sum(n for *_, n in settings) - (len(settings) - 1)  # step 1 shared between settings
        expected = {"calibrate": 2, "zero_shot": 1}.get(method, ift_candidates)
        assert candidates == expected, (task, method, settings)
