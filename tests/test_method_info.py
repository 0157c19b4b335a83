"""A method's page rows come from what it declares (MethodInfo in meta.json), never from analysis code that knows
its name: a new method, a run recorded before `method_info`, a method that declares nothing, no experiment extras."""
import pytest
from test_study import IFT_ALL, ift, run

from analysis import arms, study, study_tables
from analysis.load import skip_reason


def test_a_new_method_gets_its_own_page_row_with_no_analysis_change(tmp_path, monkeypatch):
    """A method is one Method subclass (and its YAML): it declares what the pages need (MethodInfo), the job writes
    that to meta.json, and the page gives it a row with its label, rank and candidates, knowing nothing of it."""
    from dataclasses import dataclass
    from typing import ClassVar

    from ift.experiment import methods

    @dataclass
    class Shuffled(methods.Method):  # registered by subclassing, as ift.experiment.methods' own
        name: ClassVar[str] = "toy_shuffled"
        about: ClassVar[methods.MethodInfo] = methods.MethodInfo(
            "shuffled ICL", "p={p:g}", ("p",), chooses="order", step="the s-th shuffle", rank=3)
        p: float = 0.5

    del methods.REGISTRY["toy_shuffled"]  # it registered itself; monkeypatch's entry is removed after the test
    monkeypatch.setitem(methods.REGISTRY, "toy_shuffled", Shuffled)
    toy, other = [], []
    for seed, accs, devs in ((0, [0.5, 0.7, 0.6], [0.5, 0.6, 0.9]), (1, [0.6, 0.8, 0.6], [0.5, 0.8, 0.6])):
        for p, into in ((0.25, toy), (0.75, other)):
            r = run("toy_shuffled", seed, accs if p == 0.25 else accs[:2], devs, p=p)
            r.meta["method_info"] = Shuffled.info(r.meta)  # the one line of job.py that writes meta.json
            into.append(r)
    runs = [ift(0, [0.5, 0.6], [0.5, 0.5]), ift(1, [0.6, 0.6], [0.5, 0.5]), *toy, *other]
    label = "shuffled ICL p=0.25 (order on dev)"
    assert arms.arms_of(toy[0]) == [label] and arms.arms(toy[0])[0].candidates == 3
    table = study_tables.arm_table(arms.candidates(runs)).set_index("arm")
    assert table.loc[label, "dev_steps"] == [3, 2] and table.loc[label, "dev_mean"] == pytest.approx(70.0)
    assert table.loc[label, "rank"] == 3 and table.loc[label, "dev_candidates"] == [3, 3]
    page = study.build(runs, tmp_path).read_text()
    assert f"| sst2 | {label} | 2 | 3 |" in page  # its row: seeds, then the dev candidates of a run
    assert "| sst2 | shuffled ICL p=0.75 (order on dev) | 2 | 2 |" in page  # another setting: another arm
    assert f"| {label} | 1 |" in page  # the overview: on one task

    # a run recorded by a method this analysis cannot import still reads: its meta.json says what it is
    monkeypatch.delitem(methods.REGISTRY, "toy_shuffled")
    assert arms.arms_of(toy[0]) == [label]
    del toy[0].meta["method_info"]
    with pytest.raises(ValueError, match="has no method_info and method 'toy_shuffled' is not a registered method"):
        arms.arms_of(toy[0])
    assert skip_reason(toy[0]).startswith("malformed: sst2/toy_shuffled/0/")  # listed as skipped, not read


def test_committed_runs_get_their_method_info_from_the_registered_class():
    """Runs recorded before meta.json had `method_info` get exactly what the job writes now."""
    from analysis.methods import method_info
    from ift.experiment.methods import REGISTRY

    legacy = run("grad", 0, [0.5, 0.6], [0.5, 0.6], lr=0.001)
    info = method_info(legacy)
    assert info == REGISTRY["grad"].info(legacy.meta) and info["candidates"] == 2 and info["label"] == "gradient tuning"
    assert arms.arms_of(legacy) == ["gradient tuning lr=0.001 (steps on dev)"]
    assert arms.arms_of(ift(0, [0.5], [0.5], eta=0.1)) == ["IFT aligned β=0.9 η=0.1 (T on dev)",
                                                          "IFT aligned β=0.9 (η, T on dev)", IFT_ALL]


def test_a_run_recorded_before_method_info_had_its_length_gets_its_class_length():
    """meta.json `method_info` written before MethodInfo.length (Gemma's r <= 29 runs): the setting that sets how many
    steps a run records comes from the registered class, so r <= 4 and r <= 29 of one seed share their states."""
    from analysis.methods import method_info
    from ift.experiment.methods import REGISTRY

    runs = []
    for r_max in (4, 6):
        r = run("repeat", 0, [0.5] * r_max, [0.5] * r_max, max_repeats=r_max)
        r.meta["method_info"] = {k: v for k, v in REGISTRY["repeat"].info(r.meta).items() if k != "length"}
        runs.append(r)
    assert method_info(runs[0])["length"] == "max_repeats"
    assert runs[0].config_key() != runs[1].config_key() and runs[0].setting_key() == runs[1].setting_key()
    unknown = run("toy_unregistered", 0, [0.5], [0.5])
    unknown.meta["method_info"] = {**REGISTRY["repeat"].info(unknown.meta), "label": "toy"}
    del unknown.meta["method_info"]["length"]
    assert method_info(unknown)["length"] == "T"  # a method not registered here: T, the default


@pytest.mark.slow
def test_the_analysis_imports_and_reads_method_info_without_the_experiment_extras():
    """Hydra, omegaconf, wandb and submitit are the `experiment` extra: reading runs must not need them."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\n"
            "for name in ('hydra', 'omegaconf', 'wandb', 'submitit'): sys.modules[name] = None\n"
            "from analysis import crossmodel, report, study\n"
            "from analysis.load import Run\n"
            "from analysis.methods import method_info\n"
            "print(method_info(Run('r', {'method': 'repeat', 'T': 4}))['candidates'])\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "4", proc.stderr[-2000:]


def test_a_method_that_declares_nothing_keeps_its_name_and_offers_the_steps_it_ran(monkeypatch):
    """No `about`: the page names the arm after the method; a job that lowered T after writing meta.json (steps
    fitted to the model's window) offers the steps meta.json says, not those it first asked for."""
    from dataclasses import dataclass
    from typing import ClassVar

    from ift.experiment import methods

    @dataclass
    class Bare(methods.Method):
        name: ClassVar[str] = "toy_bare"

    del methods.REGISTRY["toy_bare"]  # it registered itself; monkeypatch's entry is removed after the test
    monkeypatch.setitem(methods.REGISTRY, "toy_bare", Bare)
    r = run("toy_bare", 0, [0.5, 0.6], [0.5, 0.6])
    r.meta["method_info"] = Bare.info({**r.meta, "T": 4})  # written when the job began, before T became 2
    assert arms.arms_of(r) == ["toy_bare (step on dev)"] and arms.arms(r)[0].candidates == 2

