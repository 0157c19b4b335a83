"""Every launch of every scale of `scripts/studies.sh` is a valid config, checked without running it: the script
runs with a stand-in interpreter that records its arguments, and each recorded launch composes and passes
`parse_config` with the first value of every sweep. A typo in a study arm fails here, not hours into a study."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from ift.experiment.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
RECORDER = f"""#!/bin/sh
exec {sys.executable} -c 'import json, os, sys; open(os.environ["CALLS"], "a").write(json.dumps(sys.argv[1:]) + "\\n")' "$@"
"""


def run_script(scale: str, tmp_path: Path, *extra: str, recorder: str = RECORDER, **env) -> subprocess.CompletedProcess:
    """studies.sh with the stand-in interpreter, which appends each call's arguments to tmp_path/calls.jsonl."""
    fake = tmp_path / "python"
    fake.write_text(recorder)
    fake.chmod(0o755)
    return subprocess.run(["bash", "scripts/studies.sh", *([scale] if scale else []), *extra], cwd=ROOT,
                          env={**os.environ, "PY": str(fake), "CALLS": str(tmp_path / "calls.jsonl"),
                               "STUDY_RESULTS": str(tmp_path / "results"), "STUDY_OUT": str(tmp_path / "page"),
                               **env},
                          capture_output=True, text=True, timeout=60)


def recorded_calls(scale: str, tmp_path: Path, *extra: str, recorder: str = RECORDER, **env) -> list[list[str]]:
    proc = run_script(scale, tmp_path, *extra, recorder=recorder, **env)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        value = next(iter(override.sweep_iterator())) if override.is_sweep_override() else override.value()
        out.append(f"{override.get_key_element()}={value}")
    return out


@pytest.mark.parametrize("scale", ["--quick", "--pilot", "--nine", "--nine-fp32", "--eta", "--seeds", "--seeds-fp32", "--gemma", "--gemma-seeds", "--gemma-agnews", "--gemma-hellaswag", ""])
def test_every_launch_of_a_study_is_a_valid_config(scale, tmp_path):
    calls = recorded_calls(scale, tmp_path)
    launches = [c[1:] for c in calls if c[0] == "launch.py"]
    assert launches, calls
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for overrides in launches:
            job = parse_config(compose("config", overrides=first_of_each_sweep(overrides)))
            assert job.results_dir == tmp_path / "results", overrides
    # then the runs are packed beside the page, the page is built, and the prose quoting pages is checked
    assert calls[-3][:3] == ["-m", "analysis.archive", "pack"] and calls[-2][:2] == ["-m", "analysis.study"]
    assert calls[-1] == ["-m", "analysis.quotes", "check", "docs/results.md", "README.md"]


def test_the_eta_study_sweeps_the_three_step_sizes_and_the_papers_setting_to_15_steps(tmp_path):
    launches = [c[1:] for c in recorded_calls("--eta", tmp_path) if c[0] == "launch.py"]
    settings = {tuple(o for o in call if o.startswith(("optim.eta=", "optim.position_mode=", "optim.T=")))
                for call in launches}
    assert settings == {(f"optim.eta={eta}", "optim.position_mode=aligned", "optim.T=15")
                        for eta in ("0.001", "0.01", "0.1")} | \
        {("optim.eta=0.01", "optim.position_mode=continue", "optim.T=15")}


def test_the_gemma_study_runs_every_headline_arm_of_a_task_before_the_next_task_on_the_nine_task_rows(tmp_path):
    launches = [c[1:] for c in recorded_calls("--gemma", tmp_path, NINE_STREAM="classification") if c[0] == "launch.py"]
    assert all("model=gemma3_270m" in call and "quant=none" in call and "seed=0,1,2,3,4" in call for call in launches)
    tasks = [next(o for o in call if o.startswith("task=")) for call in launches]
    order = ["task=sst2", "task=mr", "task=sst5", "task=trec", "task=agnews"]
    assert tasks == [t for t in order for _ in range(3)] + order * 4  # 3 headline arms per task, then 4 passes
    arms = [" ".join(o for o in call if o.startswith(("method=", "optim.eta=", "optim.position_mode=", "optim.T=")))
            for call in launches[:3] + launches[15::5]]
    ift8 = ["optim.eta=0.1 optim.position_mode=aligned", "optim.eta=0.01 optim.position_mode=continue"]
    assert arms == ["method=zero_shot optim.T=8", *(f"{a} optim.T=8" for a in ift8),  # then continued to 15
                    *(f"{a} optim.T=15" for a in ift8), "method=grad optim.T=5", "method=repeat optim.T=8"]
    assert "task.eval_limit=100" in launches[0] and "task.dev_size=30" in launches[0]
    # repetition: four copies exceed Gemma's window on some seed of SST-5 and TREC, so three there
    caps = [next(o for o in call if "max_repeats" in o) for call in launches[-5:]]
    assert caps == ["++method.max_repeats=4"] * 2 + ["++method.max_repeats=3"] * 2 + ["++method.max_repeats=4"]


def test_gemma_runs_only_zero_shot_on_hellaswag_whose_demonstrations_exceed_the_window_doubled(tmp_path):
    launches = [c[1:] for c in recorded_calls("--gemma", tmp_path, NINE_STREAM="choice") if c[0] == "launch.py"]
    hellaswag = [call for call in launches if "task=hellaswag" in call]
    assert [next(o for o in call if o.startswith("method=")) for call in hellaswag] == ["method=zero_shot"]
    assert {next(o for o in call if o.startswith("task=")) for call in launches} == \
        {"task=copa", "task=winogrande", "task=obqa", "task=hellaswag"}
    assert len(launches) == 3 * 3 + 1 + 3 * 4  # every arm on the other three tasks


def _as_task(override: str, task: str) -> str:
    """An SST-2 override of --gemma as --gemma-seeds runs it on another task (multiple choice: 4 shots;
    WinoGrande: at most 3 copies, four exceed Gemma's window)."""
    choice = task in ("task=copa", "task=winogrande")
    if override == "task=sst2":
        return task
    if override == "n_shot=1" and choice:
        return "n_shot=4"
    if override == "++method.max_repeats=4" and task == "task=winogrande":
        return "++method.max_repeats=3"
    return override


def test_gemma_seeds_runs_every_gemma_arm_seed_by_seed_into_the_gemma_store_and_page(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "s").mkdir()
    gemma = [c[1:] for c in recorded_calls("--gemma", tmp_path / "g", NINE_STREAM="classification")
             if c[0] == "launch.py" and "task=sst2" in c]
    calls = recorded_calls("--gemma-seeds", tmp_path / "s", NINE_PARALLEL="1", STUDY_RESULTS="", STUDY_OUT="")
    launches = [c[1:] for c in calls if c[0] == "launch.py"]
    gemma_arms = [[o for o in call if not o.startswith(("seed=", "results_dir="))] for call in gemma]
    assert len(gemma_arms) == 7
    # to 8, 8, 48 and 67 seeds, the cheap tasks first (COPA's seeds 5 and 6 are done: its seed 7 first), then
    # MR (its estimate is reachable) before SST-2
    seeds = {"task=copa": [7, 5, 6], "task=winogrande": [5, 6, 7], "task=mr": list(range(5, 48)),
             "task=sst2": list(range(5, 67))}
    tasks_in_order = [next(o for o in call if o.startswith("task=")) for call in launches[::7]]
    assert tasks_in_order == [t for t, s in seeds.items() for _ in s]
    for task, want in seeds.items():
        mine = [call for call in launches if task in call]
        # one worker: whole seeds in queue order, each with --gemma's arms in --gemma's order
        assert [int(next(o for o in call if o.startswith("seed="))[5:]) for call in mine[::7]] == want
        assert all(len({o for o in call if o.startswith("seed=")}) == 1 for call in mine)
        strip = [[o for o in call if not o.startswith(("seed=", "results_dir="))] for call in mine[:7]]
        assert strip == [[_as_task(o, task) for o in arm] for arm in gemma_arms]
    assert all("results_dir=results/gemma" in call for call in launches)
    assert calls[-3][3:] == ["results/gemma", "docs/results/gemma/runs.tar.gz", "--whole-seeds",
                             "copa,winogrande,sst2,mr"]
    assert calls[-2][-1] == "IFT against its baselines on nine benchmarks (Gemma-3-270m base, fp32)"


def test_nine_fp32_runs_the_nine_task_arms_in_fp32_plus_both_ift_settings_to_15_into_its_own_page(tmp_path):
    (tmp_path / "bf16").mkdir()
    (tmp_path / "fp32").mkdir()
    # one worker: the order of the calls is the queue's (two workers record their calls in either order)
    nine = [c[1:] for c in recorded_calls("--nine", tmp_path / "bf16", NINE_PARALLEL="1") if c[0] == "launch.py"]
    calls = recorded_calls("--nine-fp32", tmp_path / "fp32", NINE_PARALLEL="1", STUDY_RESULTS="", STUDY_OUT="")
    launches = [c[1:] for c in calls if c[0] == "launch.py"]
    assert all("quant=none" in call and "results_dir=results/nine_fp32" in call for call in launches)
    strip = lambda calls: [[o for o in c if not o.startswith(("quant=", "results_dir="))] for c in calls]
    extra = [c for c in strip(launches) if c not in strip(nine)]
    assert {" ".join(o for o in c if o.startswith(("optim.eta=", "optim.position_mode=", "optim.T=")))
            for c in extra} == {"optim.eta=0.1 optim.position_mode=aligned optim.T=15",
                                "optim.eta=0.01 optim.position_mode=continue optim.T=15"}
    assert len(extra) == 2 * 4 and len(launches) == len(nine) + len(extra)  # 4 task groups per new arm
    # the cross-model page's two arms run before the step-size arms to T = 15 (the step-size page has those)
    stripped = strip(launches)
    last_new = max(i for i, c in enumerate(stripped) if c in extra)
    step_size = [i for i, c in enumerate(stripped) if "optim.T=15" in c and c not in extra]
    assert step_size and last_new < min(step_size)
    assert calls[-3][3:] == ["results/nine_fp32", "docs/results/nine_fp32/runs.tar.gz"]
    # its page chooses among steps <= 8 (the bf16-mixed page's T) while the runs continue to 15; no other page does
    assert calls[-2][-3:] == ["IFT against its baselines on nine benchmarks (bundled SmolLM2-135M, fp32)",
                              "--max-step", "8"]
    assert "--max-step" not in recorded_calls("--nine", tmp_path / "bf16")[-1]


def test_seeds_fp32_runs_the_many_seeds_launches_in_fp32_into_a_store_and_page_of_its_own(tmp_path):
    (tmp_path / "bf16").mkdir()
    (tmp_path / "fp32").mkdir()
    bf16 = [c[1:] for c in recorded_calls("--seeds", tmp_path / "bf16", SEEDS_TASKS="sst5,trec",
                                          STUDY_RESULTS="", STUDY_OUT="") if c[0] == "launch.py"]
    calls = recorded_calls("--seeds-fp32", tmp_path / "fp32", SEEDS_TASKS="sst5,trec", STUDY_RESULTS="", STUDY_OUT="")
    launches = [c[1:] for c in calls if c[0] == "launch.py"]
    assert all("quant=bf16_mixed" in call for call in bf16)

    def reused(call):
        return next(o for o in call if o.startswith("reuse_from="))

    assert [[o.replace("quant=bf16_mixed", "quant=none").replace("results/seeds", "results/seeds_fp32") for o in c
             if o != reused(c)] for c in bf16] == [[o for o in c if o != reused(c)] for c in launches]
    # seeds 0-4 are the nine-task fp32 study's runs: reused from its store, or from its archive unpacked aside
    unpack = next(c for c in calls if c[:3] == ["-m", "analysis.archive", "unpack"])
    assert unpack[3] == "docs/results/nine_fp32/runs.tar.gz" and Path(unpack[4]).name == "nine_fp32"
    assert {reused(c) for c in launches} == {f"reuse_from=[{ROOT / 'results' / 'nine_fp32'},{unpack[4]}]"}
    assert {reused(c) for c in bf16} != {reused(c) for c in launches}
    assert calls[-3][3:] == ["results/seeds_fp32", "docs/results/seeds_fp32_sst5_trec/runs.tar.gz", "--tasks", "sst5,trec"]
    assert calls[-2][-1] == "Many seeds: the default IFT setting against ICL and zero-shot (bundled SmolLM2-135M, fp32): sst5, trec"


def test_pilot_runs_both_tasks_in_fp32_into_a_page_directory_of_its_own(tmp_path):
    calls = recorded_calls("--pilot", tmp_path, STUDY_RESULTS="", STUDY_OUT="")
    launches = [c[1:] for c in calls if c[0] == "launch.py"]
    assert all({"task=sst2,trec", "seed=0,1,2,3,4", "results_dir=results/pilot"} <= set(call) for call in launches)
    assert not any(o.startswith("quant=") for call in launches for o in call)  # the default precision: fp32
    assert calls[-3][3:] == ["results/pilot", "docs/results/pilot/runs.tar.gz"]
    assert calls[-2][-1] == "IFT against its baselines (bundled SmolLM2-135M, fp32): pilot"


@pytest.mark.parametrize("scale, overrides, methods, title", [
    # no repetition on AGNews: 2 copies and the query exceed the window on 4 of 5 seeds
    ("agnews", {"task=agnews", "task.demo_split=test"}, ["method=zero_shot", "optim.eta=0.1", "optim.eta=0.01",
     "method=grad"], "AGNews with demonstrations of at most 300 characters (Gemma-3-270m base, fp32)"),
    # HellaSwag: repetition capped at 2 copies (with the longest query, 410-482 tokens)
    ("hellaswag", {"task=hellaswag", "task.demo_split=validation", "n_shot=4"}, ["method=zero_shot",
     "optim.eta=0.1", "optim.eta=0.01", "method=grad", "method=repeat"],
     "HellaSwag with demonstrations of at most 300 characters (Gemma-3-270m base, fp32)"),
])
def test_a_short_demonstrations_study_draws_them_into_a_store_and_page_of_its_own(scale, overrides, methods, title,
                                                                                  tmp_path):
    # one worker: the launches in queue order (two workers take them from the queue in either order)
    calls = recorded_calls(f"--gemma-{scale}", tmp_path, NINE_PARALLEL="1", STUDY_RESULTS="", STUDY_OUT="")
    launches = [c[1:] for c in calls if c[0] == "launch.py"]
    assert all(overrides | {"+task.demo_max_chars=300", "model=gemma3_270m", "seed=0,1,2,3,4",
                            f"results_dir=results/gemma_{scale}"} <= set(call) for call in launches)
    assert [next(o for o in call if o.startswith("method=") or o.startswith("optim.eta=")) for call in launches] == \
        methods
    assert all("++method.max_repeats=2" in call for call in launches if "method=repeat" in call)
    assert calls[-3][3:] == [f"results/gemma_{scale}", f"docs/results/gemma_{scale}/runs.tar.gz"]
    assert calls[-2][-1] == title


def test_seeds_tasks_runs_only_those_tasks_with_the_same_seeds_and_a_page_of_their_own(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "some").mkdir()
    every = [c[1:] for c in recorded_calls("--seeds", tmp_path / "all") if c[0] == "launch.py"]
    # an empty STUDY_OUT leaves the default page directory (the recorder writes nothing there)
    results = tmp_path / "some" / "results"
    (results / "hellaswag").mkdir(parents=True)  # the shared store's runs of hellaswag; none of winogrande yet
    (results / "mr").mkdir()  # another subset's runs: neither packed nor reported here
    calls = recorded_calls("--seeds", tmp_path / "some", SEEDS_TASKS="hellaswag,winogrande", STUDY_OUT="")
    some = [c[1:] for c in calls if c[0] == "launch.py"]
    assert {o for call in some for o in call if o.startswith("task=")} == {"task=winogrande", "task=hellaswag"}
    own = ("results_dir=", "reuse_from=")  # the store, and where the nine-task archive is unpacked (a temp dir)
    assert [[o for o in call if not o.startswith(own)] for call in some] == \
        [[o for o in call if not o.startswith(own)] for call in every
         if "task=winogrande" in call or "task=hellaswag" in call]
    assert calls[-3][3:] == [str(results), "docs/results/seeds_hellaswag_winogrande/runs.tar.gz",
                             "--tasks", "hellaswag,winogrande"]
    assert calls[-2][2:5] == [str(results / "hellaswag"), "--out", "docs/results/seeds_hellaswag_winogrande"]


@pytest.mark.parametrize("scale,env,message", [
    ("--nine", {"NINE_STREAM": "both-ish"}, "NINE_STREAM=both-ish: expected classification, choice or both"),
    ("--seeds", {"SEEDS_TASKS": "winogrande,hellaswg"},
     "SEEDS_TASKS=winogrande,hellaswg: 'hellaswg' is not one of: sst2 mr sst5 trec copa obqa agnews winogrande "
     "hellaswag"),
])
def test_a_bad_setting_is_refused_before_any_launch(scale, env, message, tmp_path):
    proc = run_script(scale, tmp_path, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "calls.jsonl").exists()


def arm_of(call: list[str]) -> str:
    """A launch's arm: the settings that tell the nine-task study's arms apart."""
    return " ".join(o for o in call if o.startswith(("experiment=", "method=", "optim.eta=", "optim.position_mode=",
                                                      "optim.T=")))


def test_two_nine_task_workers_share_one_queue_every_launch_once_in_order_of_priority(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    def launches(calls):  # without the store, which is each run's own
        return [[o for o in c[1:] if not o.startswith("results_dir=")] for c in calls if c[0] == "launch.py"]

    serial = launches(recorded_calls("--nine-fp32", tmp_path / "one", NINE_PARALLEL="1"))
    shared = launches(recorded_calls("--nine-fp32", tmp_path / "two"))
    assert len({json.dumps(c) for c in serial}) == len(serial)  # no launch twice
    assert sorted(map(json.dumps, shared)) == sorted(map(json.dumps, serial))  # the same launches, each once
    # every arm over all four task groups (both task kinds) before the next arm
    groups = [next(o for o in c if o.startswith("task=")) for c in serial]
    assert groups[:4] == ["task=sst2,trec,sst5,mr", "task=agnews", "task=copa,winogrande,obqa", "task=hellaswag"]
    arm = [arm_of(c) for c in serial]
    assert all(len(set(arm[i:i + 4])) == 1 for i in range(0, len(arm), 4)), arm
    assert len(set(arm)) == len(arm) // 4


def test_with_slow_multiple_choice_launches_neither_worker_runs_ahead_by_arms(tmp_path):
    """Two workers on one queue stay within an arm of each other however long a task kind takes (two streams,
    one per task kind, let the classification stream finish every arm while multiple choice was on its third)."""
    slow = f"""#!/bin/sh
exec {sys.executable} -c 'import json, os, sys, time
open(os.environ["CALLS"], "a").write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "launch.py": time.sleep(0.6 if any(a in sys.argv for a in ("task=copa,winogrande,obqa", "task=hellaswag")) else 0.1)' "$@"
"""
    calls = recorded_calls("--nine-fp32", tmp_path, recorder=slow)
    arms = [arm_of(c) for c in calls if c[0] == "launch.py"]
    order = list(dict.fromkeys(arms))  # the arms in queue order
    started = [order.index(a) for a in arms]
    assert all(started[j] >= started[i] - 1 for i in range(len(started)) for j in range(i, len(started))), started


def test_a_dry_run_passes_dry_run_to_every_launch_and_packs_and_builds_nothing(tmp_path):
    (tmp_path / "dry").mkdir()
    (tmp_path / "real").mkdir()
    real = recorded_calls("--nine-fp32", tmp_path / "real", NINE_PARALLEL="1")
    calls = recorded_calls("--nine-fp32", tmp_path / "dry", "dry_run=true", NINE_PARALLEL="1")
    same_store = lambda c: [o.replace(str(tmp_path / "real"), str(tmp_path / "dry")) for o in c]
    assert [c for c in calls if c[0] == "launch.py"] == [same_store(c) + ["dry_run=true"] for c in real
                                                         if c[0] == "launch.py"]
    assert real[-3][:3] == ["-m", "analysis.archive", "pack"] and real[-2][:2] == ["-m", "analysis.study"]
    assert not any(c[:3] == ["-m", "analysis.archive", "pack"] or c[:2] == ["-m", "analysis.study"] for c in calls)


def test_a_study_restores_its_committed_archive_also_when_its_page_goes_elsewhere(tmp_path):
    """STUDY_OUT sends this run's page elsewhere; the runs committed beside the study's own page are restored all
    the same (without them a fresh machine started the Gemma study again from its first run), then STUDY_OUT's."""
    page = tmp_path / "page"
    page.mkdir()
    (page / "runs.tar.gz").write_bytes(b"")
    calls = recorded_calls("--gemma-seeds", tmp_path, NINE_PARALLEL="1")
    unpacks = [c[3:] for c in calls if c[:3] == ["-m", "analysis.archive", "unpack"]]
    store = str(tmp_path / "results")
    assert unpacks == [["docs/results/gemma/runs.tar.gz", store], [str(page / "runs.tar.gz"), store]]
    # without STUDY_OUT the committed archive is restored once
    (tmp_path / "again").mkdir()
    calls = recorded_calls("--gemma-seeds", tmp_path / "again", NINE_PARALLEL="1", STUDY_OUT="")
    assert [c[3:] for c in calls if c[:3] == ["-m", "analysis.archive", "unpack"]] == [
        ["docs/results/gemma/runs.tar.gz", str(tmp_path / "again" / "results")]]


def test_page_only_launches_nothing_and_packs_and_builds_the_page_as_a_full_run_does(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "page_only").mkdir()
    full = recorded_calls("--gemma-seeds", tmp_path / "full", NINE_PARALLEL="1")
    calls = recorded_calls("--gemma-seeds", tmp_path / "page_only", NINE_PARALLEL="1", STUDY_PAGE_ONLY="1")
    assert any(c[0] == "launch.py" for c in full) and not any(c[0] == "launch.py" for c in calls)
    same_dir = lambda c: [o.replace(str(tmp_path / "full"), str(tmp_path / "page_only")) for o in c]
    assert calls == [same_dir(c) for c in full if c[0] != "launch.py"]
    assert calls[-3][:3] == ["-m", "analysis.archive", "pack"] and "--whole-seeds" in calls[-3]
    # the page reads the packed archive (whole seeds), not the store a stop left partial seeds in
    assert calls[-2][:3] == ["-m", "analysis.study", str(tmp_path / "page_only" / "page" / "runs.tar.gz")]
