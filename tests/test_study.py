"""analysis.study: which (run, step) each protocol picks, paired intervals, the ICL consistency check, the page."""
import math

import numpy as np
import pytest
from scipy import stats

from analysis import arms, core, study, study_figures, study_tables
from analysis.load import Run
from ift.protocol import COSTLIEST

# the page's labels of the main arms (what ift.experiment.methods declares for IFT and the baselines)
IFT_ALL = "IFT (mode, η, β, T on dev)"
IFT_EARLY = "IFT (mode, η, β on dev; T by early stopping, patience 2)"
ZERO = "zero-shot"
BASELINE_ARMS = {"repeat": "ICL ×r (r on dev)", "more_demos": "ICL, k×n shots (k on dev)"}


def run(method, seed, accs, devs, task="sst2", tokens=None, **meta):
    steps = [{"step": i + 1, "acc": a, "acc_norm": a, "dev_acc": d, "dev_acc_norm": d,
              "tune_tokens": (tokens or (lambda s: 10 * s))(i + 1), "prefix_tokens": 10}
             for i, (a, d) in enumerate(zip(accs, devs))]
    base = {"model": "m", "task": task, "n_shot": 1, "seed": seed, "T": len(accs), "method": method,
            "status": "finished", "eta": None, "beta": None, "position_mode": None}
    return Run(f"{task}/{method}/{seed}/{meta}", {**base, **meta}, steps, {"status": "finished"})


def ift(seed, accs, devs, eta=0.01, mode="aligned", **kw):
    return run("ift", seed, accs, devs, eta=eta, beta=0.9, position_mode=mode, **kw)


def test_honest_protocol_picks_the_dev_best_step_and_reports_its_eval_accuracy():
    runs = [ift(0, [0.60, 0.70, 0.50], [0.5, 0.6, 0.9])]
    cands = arms.candidates(runs)
    dev = arms.choose(cands, "dev")
    pick = dev[dev["arm"] == IFT_ALL].iloc[0]
    assert (pick["step"], pick["acc"]) == (3, 50.0)  # dev says step 3; its eval accuracy is reported
    paper = arms.choose(cands, "eval")
    pick = paper[paper["arm"] == IFT_ALL].iloc[0]
    assert (pick["step"], pick["acc"]) == (2, 70.0)  # the paper's protocol peeks at eval


def test_ties_go_to_the_cheaper_choice_so_a_flat_curve_is_icl():
    runs = [ift(0, [0.6, 0.7, 0.8], [0.5, 0.5, 0.5]), ift(0, [0.6, 0.9, 0.9], [0.5, 0.5, 0.5], eta=0.1)]
    dev = arms.choose(arms.candidates(runs), "dev")
    pick = dev[dev["arm"] == IFT_ALL].iloc[0]
    assert pick["step"] == 1 and pick["acc"] == 60.0


def test_eta_and_mode_are_chosen_per_seed_on_dev():
    runs = [ift(0, [0.5, 0.6], [0.5, 0.7], eta=0.1), ift(0, [0.5, 0.9], [0.5, 0.6], eta=0.01),
            ift(0, [0.5, 0.8], [0.5, 0.8], mode="continue")]
    dev = arms.choose(arms.candidates(runs), "dev").set_index("arm")
    assert dev.loc[IFT_ALL, "acc"] == 80.0  # continue's step 2 has the best dev accuracy
    assert dev.loc["IFT aligned β=0.9 (η, T on dev)", "acc"] == 60.0  # η = 0.1 wins on dev, not 0.01
    assert dev.loc["IFT aligned β=0.9 η=0.01 (T on dev)", "acc"] == 90.0


def test_intervals_are_student_t_over_seeds_and_the_difference_is_paired():
    icl = [0.60, 0.70, 0.65, 0.55, 0.62]
    tuned = [0.63, 0.71, 0.69, 0.56, 0.66]
    runs = [ift(s, [a, b], [0.1, 0.9]) for s, (a, b) in enumerate(zip(icl, tuned))]
    table = study_tables.arm_table(arms.candidates(runs)).set_index("arm")
    d = 100 * (np.array(tuned) - np.array(icl))
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    row = table.loc[IFT_ALL]
    assert row["seeds"] == 5
    assert row["dev_delta"] == pytest.approx(d.mean()) and row["dev_delta_ci"] == pytest.approx(half)
    assert row["dev_mean"] == pytest.approx(100 * np.mean(tuned))
    assert core.verdict(row["dev_delta"], row["dev_delta_ci"]) == "better"
    assert table.loc[arms.ICL, "dev_mean"] == pytest.approx(100 * np.mean(icl))


def test_verdicts():
    assert core.verdict(2.0, 1.0) == "better"
    assert core.verdict(-2.0, 1.0) == "worse"
    assert core.verdict(0.5, 1.0) == "no difference"
    assert core.verdict(0.5, float("nan")) == "one seed"


def test_methods_that_read_other_demonstrations_at_step_1_are_refused():
    runs = [ift(0, [0.6, 0.7], [0.5, 0.6]), run("repeat", 0, [0.65, 0.7], [0.5, 0.6])]
    with pytest.raises(ValueError, match="ICL.*differs"):
        study_tables.arm_table(arms.candidates(runs))


def test_baselines_get_their_own_arms_and_zero_shot_is_not_icl():
    runs = [ift(0, [0.6, 0.7], [0.5, 0.6]), run("repeat", 0, [0.6, 0.8], [0.5, 0.4]),
            run("zero_shot", 0, [0.3], [0.3]), run("grad", 0, [0.6, 0.65], [0.5, 0.7], lr=0.01)]
    table = study_tables.arm_table(arms.candidates(runs)).set_index("arm")
    assert table.loc[arms.ICL, "dev_mean"] == 60.0
    assert table.loc[ZERO, "dev_mean"] == 30.0
    assert table.loc[BASELINE_ARMS["repeat"], "dev_mean"] == 60.0  # r = 1 on dev
    assert table.loc[BASELINE_ARMS["repeat"], "eval_mean"] == 80.0
    assert table.loc["gradient tuning lr=0.01 (steps on dev)", "dev_mean"] == 65.0


def test_page_has_overview_tables_figures_and_cosines(tmp_path):
    runs = []
    for s in range(3):
        runs += [ift(s, [0.6, 0.7 + 0.01 * s], [0.5, 0.6]), ift(s, [0.6, 0.5], [0.5, 0.6], mode="continue"),
                 run("zero_shot", s, [0.4], [0.4]),
                 run("grad", s, [0.6, 0.62], [0.5, 0.55], lr=0.01,
                     pseudo_grad_cosine={"continue": {"k": [0.1, -0.2], "v": [0.3, 0.1]},
                                         "aligned": {"k": [0.5, 0.6], "v": [0.2, 0.4]}})]
    runs.append(Run("broken", {"status": "failed", "error": "boom"}, skip="failed: boom"))
    page = study.build(runs, tmp_path)
    text = page.read_text()
    assert "## Overview" in text and "IFT (mode, η, β, T on dev)" in text and "failed: boom" in text
    assert "## IFT against the baselines, head to head" in text and "| − gradient tuning lr=0.01" in text
    assert "| sst2 | IFT continue β=0.9 η=0.01 | 3 | 2 | 0 |" in text  # compute: 3 runs of 2 steps, no rows recorded
    for png in ("study_deltas.png", "study_curves.png", "study_cosine.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "| aligned | K | 0.550 |" in text  # mean over layers 0.5, 0.6
    # signed layers cancel in the mean (-0.05) but not in the spread: mean |cos| 0.15, largest 0.2
    assert "| continue | K | -0.050 | -0.200 | 0.100 | 0.150 | 0.200 | 3 |" in text


def test_early_stopping_stops_after_patience_steps_without_dev_improvement():
    assert arms.early_stop([50, 60, 60, 55, 70], patience=2) == 4  # best at step 2; steps 3, 4 no better
    assert arms.early_stop([50, 60, 70, 80], patience=2) == 4  # always improving: run to the end
    assert arms.early_stop([50, 50, 50], patience=2) == 3  # ties are no improvement: best stays step 1
    runs = [ift(0, [0.6, 0.7, 0.9, 0.95], [0.5, 0.5, 0.5, 0.9])]  # dev would only improve at step 4
    dev = arms.choose(arms.candidates(runs), "dev").set_index("arm")
    assert dev.loc[IFT_EARLY, "step"] == 1 and dev.loc[IFT_ALL, "step"] == 4


def test_the_overview_pools_tasks_with_an_interval_over_tasks():
    # two tasks, two seeds each: IFT gains +10 and +20 on one task (mean +15), +0 and +10 on the other (+5)
    runs = [ift(0, [0.5, 0.6], [0.1, 0.9]), ift(1, [0.5, 0.7], [0.1, 0.9]),
            ift(0, [0.4, 0.4], [0.1, 0.9], task="trec"), ift(1, [0.4, 0.5], [0.1, 0.9], task="trec")]
    rows = study_tables.overview(study_tables.arm_table(arms.candidates(runs))).set_index("method (choice)")
    half = stats.t.ppf(0.975, 1) * np.std([15.0, 5.0], ddof=1) / math.sqrt(2)
    assert rows.loc[IFT_ALL, "mean honest Δ (± over tasks)"] == f"+10.0 ± {half:.1f}"
    assert rows.loc[IFT_ALL, "tasks"] == 2


def test_seeds_for_a_target_interval_inverts_the_t_interval():
    sd = 6.0
    half5 = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    need = core.seeds_for(half5, 5, target=3.0)
    assert stats.t.ppf(0.975, need - 1) * sd / math.sqrt(need) <= 3.0
    assert stats.t.ppf(0.975, need - 2) * sd / math.sqrt(need - 1) > 3.0  # the smallest such number
    assert core.seeds_for(1.0, 5) == 3 and core.seeds_for(float("nan"), 1) is None  # t(1) = 12.7 rules out 2


def test_task_matrix_has_one_row_per_task_with_marks_for_significant_differences():
    icl = [0.60, 0.70, 0.65]
    runs = [ift(s, [a, a + 0.1], [0.1, 0.9]) for s, a in enumerate(icl)]  # +10 on every seed: better
    runs += [run("zero_shot", s, [a - 0.2 + 0.01 * s], [0.5]) for s, a in enumerate(icl)]
    runs += [ift(s, [0.4, 0.4], [0.1, 0.9], task="trec") for s in range(2)]
    rows = study_tables.task_matrix(study_tables.arm_table(arms.candidates(runs))).set_index("task")
    assert list(rows.index) == ["sst2", "trec"]
    assert rows.loc["sst2", IFT_ALL] == "+10.0 ± 0.0 ▲"
    assert rows.loc["sst2", ZERO].endswith("▼") and rows.loc["trec", ZERO] == "–"
    assert rows.loc["sst2", "ICL acc"].startswith("65.0 ±") and rows.loc["trec", "seeds"] == 2
    assert rows.loc["trec", IFT_ALL] == "+0.0 ± 0.0"


def test_curves_give_a_setting_one_colour_on_every_panel_and_list_every_setting_once():
    runs = [ift(0, [0.5, 0.6], [0.5, 0.6], eta=0.1), ift(0, [0.5, 0.4], [0.5, 0.6], eta=0.01, mode="continue"),
            ift(0, [0.4, 0.5], [0.5, 0.6], eta=0.01, mode="continue", task="agnews")]  # the first panel: one setting
    fig = study_figures.curves_figure(arms.candidates(runs))
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() != "ICL":
                colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert colours.keys() == {"aligned β=0.9 η=0.1", "continue β=0.9 η=0.01"}
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == 2
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["ICL", "aligned β=0.9 η=0.1",
                                                                       "continue β=0.9 η=0.01"]


def test_a_configuration_missing_seeds_is_left_out_and_listed(tmp_path):
    runs = [ift(s, [0.6, 0.7], [0.5, 0.6]) for s in range(3)]
    runs += [ift(s, [0.6, 0.9], [0.5, 0.9], eta=0.1) for s in range(2)]  # η = 0.1 stopped after seed 1
    runs += [run("zero_shot", s, [0.4], [0.4]) for s in range(3)]
    kept = arms.drop_incomplete(list(runs))
    assert {r.meta.get("eta") for r in kept if r.meta["method"] == "ift"} == {0.01}
    assert len(kept) == 6 and all(r.skip is None for r in kept)
    left = [r for r in runs if r.skip]
    assert len(left) == 2 and "lacks seed(s) 2 of the 3" in left[0].skip
    assert arms.seed_ranges({12, 0, 2, 3, 4, 11, 39}) == "0, 2-4, 11-12, 39"
    # η = 0.1 (better on dev) would otherwise be chosen on seeds 0-1 only, where it scores 90
    fresh = [ift(s, [0.6, 0.7], [0.5, 0.6]) for s in range(3)] + \
        [ift(s, [0.6, 0.9], [0.5, 0.9], eta=0.1) for s in range(2)]
    text = study.build(fresh, tmp_path).read_text()
    assert "2 skipped" in text and "incomplete arm" in text and "η=0.1" not in text


def test_head_to_head_pairs_ift_with_each_baseline_by_seed_and_pools_tasks():
    # sst2: IFT's dev-chosen step gains +10 over ICL; zero-shot is 5 / 25 points above ICL on seeds 0 / 1
    icl = [0.60, 0.50]
    runs = [ift(s, [a, a + 0.1], [0.1, 0.9]) for s, a in enumerate(icl)]
    runs += [run("zero_shot", 0, [0.65], [0.5]), run("zero_shot", 1, [0.75], [0.5])]
    runs += [ift(s, [0.4, 0.4], [0.1, 0.9], task="trec") for s in range(2)]
    runs += [run("zero_shot", s, [0.3], [0.5], task="trec") for s in range(2)]
    rows = study_tables.head_to_head(arms.candidates(runs)).set_index("task")
    col = f"− {ZERO}"
    assert list(rows.columns) == ["n_shot", "seeds", col]  # no other baseline ran
    half = stats.t.ppf(0.975, 1) * np.std([5.0, -15.0], ddof=1) / math.sqrt(2)
    assert rows.loc["sst2", col] == f"-5.0 ± {half:.1f}"  # IFT 70 / 60 against zero-shot 65 / 75
    assert rows.loc["trec", col] == "+10.0 ± 0.0 ▲"
    half = stats.t.ppf(0.975, 1) * np.std([-5.0, 10.0], ddof=1) / math.sqrt(2)
    assert rows.loc["mean over tasks", col] == f"+2.5 ± {half:.1f} (2 tasks)"
    # each side's dev candidates: IFT's 2 steps on every task and seed, zero-shot's 1
    assert rows.loc[f"dev candidates per seed; {IFT_ALL}: 2", col] == "1"


def test_longer_tuning_compares_dev_choices_within_8_steps_and_within_all():
    # T = 12 runs: dev peaks at step 10 on seed 0 (eval +20 there) and at step 2 on seed 1 (+10 at step 2)
    a = ift(0, [0.5, 0.5] + [0.5] * 7 + [0.7, 0.5, 0.5], [0.1, 0.2] + [0.2] * 7 + [0.9, 0.1, 0.1])
    b = ift(1, [0.6, 0.7] + [0.6] * 10, [0.1, 0.9] + [0.1] * 10)
    short = ift(0, [0.5] * 4, [0.1] * 4, eta=0.1)  # only 4 steps: not in the table
    rows = study_tables.longer_tuning(arms.candidates([a, b, short, ift(1, [0.6] * 4, [0.1] * 4, eta=0.1)]))
    assert list(rows["setting"]) == ["IFT aligned β=0.9 η=0.01"]
    row = rows.iloc[0]
    assert row["honest Δ vs ICL, T ≤ 8"].startswith("+5.0 ±")  # seed 0 picks step 2 (+0), seed 1 step 2 (+10)
    assert row["honest Δ vs ICL, T ≤ 12"].startswith("+15.0 ±")  # seed 0 now picks step 10 (+20)
    assert row["T ≤ 12 − T ≤ 8"].startswith("+10.0 ±") and row["dev-chosen steps (T ≤ 12)"] == "10, 2"


def test_ties_to_the_latest_step_move_a_flat_dev_curve_off_icl_and_the_table_shows_both_rules():
    # dev is flat on seed 0 (earliest: step 1 = ICL, latest: step 3, +20) and peaks at step 2 on seed 1 (+10)
    runs = [ift(0, [0.5, 0.6, 0.7], [0.5, 0.5, 0.5]), ift(1, [0.6, 0.7, 0.4], [0.1, 0.9, 0.2])]
    cands = arms.candidates(runs)
    latest = arms.choose(cands, "dev", tie=COSTLIEST).set_index(["arm", "seed"]).sort_index()
    assert list(latest.loc[IFT_ALL, "step"]) == [3, 2]
    rows = study_tables.tie_sensitivity(cands).set_index(["task", "method (choice)"])
    row = rows.loc[("sst2", IFT_ALL)]
    half = stats.t.ppf(0.975, 1) * np.std([0.0, 10.0], ddof=1) / math.sqrt(2)
    assert row["honest Δ, ties to the earliest step"] == f"+5.0 ± {half:.1f}"
    half = stats.t.ppf(0.975, 1) * np.std([20.0, 10.0], ddof=1) / math.sqrt(2)
    assert row["honest Δ, ties to the latest step"] == f"+15.0 ± {half:.1f}"
    assert row["seeds whose pick moves"] == 1 and row["seeds"] == 2
    mean = rows.loc[("mean over tasks", IFT_ALL)]
    assert mean["honest Δ, ties to the latest step"] == "+15.0 (1 tasks)"  # one task: no interval over tasks


def test_the_papers_protocol_per_task_picks_one_step_on_the_mean_over_seeds_and_pairs_by_seed():
    # per seed the best eval steps are 2 (80) and 3 (90); averaged over seeds step 3 wins (75 against 70)
    runs = [ift(0, [0.5, 0.8, 0.6], [0.5, 0.5, 0.5]), ift(1, [0.5, 0.6, 0.9], [0.5, 0.5, 0.5])]
    cands = arms.candidates(runs)
    per_task = arms.choose_per_task(cands, "eval").set_index(["arm", "seed"]).sort_index()
    assert list(per_task.loc[IFT_ALL, "step"]) == [3, 3] and list(per_task.loc[IFT_ALL, "acc"]) == [60, 90]
    row = study_tables.arm_table(cands).set_index("arm").loc[IFT_ALL]
    assert row["eval_steps"] == [2, 3] and row["eval_delta"] == pytest.approx(35)  # per seed: +30, +40
    assert row["task_eval_steps"] == [3, 3] and row["task_eval_delta"] == pytest.approx(25)  # +10, +40
    assert row["task_eval_delta_ci"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std([10, 40], ddof=1) / math.sqrt(2))
    matrix = study_tables.task_matrix(study_tables.arm_table(cands)).iloc[0]
    assert matrix["IFT, paper protocol Δ, one T per task"].startswith("+25.0 ±")
    assert matrix["IFT, paper protocol Δ"].startswith("+35.0 ±")


def test_one_step_per_task_needs_every_seed_to_have_it():
    # simulated early stopping (patience 2) cuts seed 0 after step 3; seed 1 runs all 4 steps, best at step 4
    runs = [ift(0, [0.5, 0.6, 0.6, 0.99], [0.5, 0.4, 0.4, 0.4]), ift(1, [0.5, 0.6, 0.6, 0.99], [0.1, 0.2, 0.3, 0.4])]
    per_task = arms.choose_per_task(arms.candidates(runs), "eval").set_index(["arm", "seed"]).sort_index()
    assert list(per_task.loc[IFT_ALL, "step"]) == [4, 4]
    assert list(per_task.loc[IFT_EARLY, "step"]) == [2, 2]  # step 4 is seed 1's only; 2 and 3 tie: the earlier


def test_a_page_mixing_bf16_mixed_runs_from_cpus_with_and_without_amx_says_so(tmp_path):
    def on(cpu, amx, seed, dtype="bf16-mixed"):
        return ift(seed, [0.6, 0.7], [0.5, 0.6], dtype=dtype,
                   versions={} if amx is None else {"cpu": cpu, "cpu_amx": amx})
    same = [on("Intel Xeon", True, 0), on("Intel Xeon", True, 1)]
    assert study.precision_note(same) is None
    assert study.precision_note([on("Intel Xeon", True, 0), on("AMD EPYC", False, 1, dtype="fp32")]) is None
    mixed = [on("Intel Xeon", True, 0), on("AMD EPYC", False, 1), on(None, None, 2)]
    note = study.precision_note(mixed)
    assert "AMD EPYC without AMX: 1" in note and "Intel Xeon with AMX: 1" in note
    assert "CPU kind not recorded: 1" in note
    page = study.build(mixed, tmp_path).read_text()
    assert "**Mixed CPU kinds.**" in page
    assert "Mixed CPU kinds" not in study.build(same, tmp_path / "same").read_text()


def test_a_page_mixing_precisions_or_models_lists_them_per_task(tmp_path):
    fp32 = [ift(seed, [0.6, 0.7], [0.5, 0.6], task="trec", dtype="fp32") for seed in (0, 1)]
    bf16 = [ift(seed, [0.6, 0.7], [0.5, 0.6], dtype="bf16-mixed") for seed in (0, 1)]
    assert study.setup_table(fp32) is None
    table = study.setup_table(bf16 + fp32)
    assert table.to_dict("records") == [{"task": "sst2", "model": "m", "precision": "bf16-mixed", "runs": 2},
                                        {"task": "trec", "model": "m", "precision": "fp32", "runs": 2}]
    other_model = [ift(seed, [0.6, 0.7], [0.5, 0.6], task="trec", dtype="fp32", model="other") for seed in (0, 1)]
    assert study.setup_table(fp32 + other_model) is not None
    page = study.build(bf16 + fp32, tmp_path).read_text()
    assert "**Mixed models or precisions.**" in page and "| trec | m | fp32 | 2 |" in page
    assert "Mixed models" not in study.build(fp32, tmp_path / "one").read_text()


def test_a_page_of_baselines_alone_has_no_empty_ift_settings_table(tmp_path):
    runs = []
    for s in range(3):
        runs += [run("zero_shot", s, [0.4], [0.4]), run("repeat", s, [0.5, 0.55], [0.5, 0.6])]
    text = study.build(runs, tmp_path).read_text()
    assert "ICL ×r (r on dev)" in text
    assert "## IFT settings" not in text and "|  |\n||" not in text


def test_max_step_chooses_among_the_first_steps_everywhere_but_tuning_longer(tmp_path):
    # seed 0's dev rows peak at step 10 (eval +20 there); within 8 steps they pick step 2 (+0)
    long = [ift(0, [0.5] * 9 + [0.7, 0.5, 0.5], [0.1, 0.2] + [0.2] * 7 + [0.9, 0.1, 0.1]),
            ift(1, [0.6, 0.7] + [0.6] * 10, [0.1, 0.9] + [0.1] * 10)]
    cut = [Run(r.id, {**r.meta, "T": 8}, r.steps[:8], r.summary) for r in long]
    limited = study.build(long, tmp_path / "limited", max_step=8).read_text()
    every = study.build(long, tmp_path / "every").read_text()
    eight = study.build(cut, tmp_path / "eight").read_text()
    section = lambda text, name: text.split(f"## {name}", 1)[1].split("\n## ", 1)[0].split("\n![", 1)[0]
    for name in ("Overview", "By task", "Each arm at a fixed step"):
        assert section(limited, name) == section(eight, name)
    assert section(limited, "Overview") != section(every, "Overview")
    assert "chooses among steps ≤ 8" in limited and "chooses among steps" not in every
    assert section(limited, "Tuning longer") == section(every, "Tuning longer")
    assert "| +5.0 ± " in section(limited, "Tuning longer") and "| +15.0 ± " in section(limited, "Tuning longer")


def test_compute_counts_a_run_continued_to_a_larger_t_once_as_the_longer_run():
    short = ift(0, [0.5] * 8, [0.5] * 8)
    steps = [{**s, "time_s": 2.0} for s in ift(0, [0.5] * 15, [0.5] * 15).steps]
    long = Run("sst2/ift/0/long", {**short.meta, "T": 15}, steps, {"status": "finished"})
    other = ift(1, [0.5] * 8, [0.5] * 8)  # another seed: a run of its own
    row = study_tables.cost_table([short, long, other]).iloc[0]
    assert row["runs"] == 2 and row["steps"] == "8-15"  # the runs' steps differ: their range
    assert row["wall s per run"] == "15"  # 30 s for the continued run, 0 for the other
    assert row["s per step"] == "1.3"  # 15 s over (15 + 8) / 2 steps, not over (8 + 15 + 8) / 3


def test_sd_ratio_is_the_ratio_of_standard_deviations_with_a_paired_bootstrap_interval():
    x = np.array([50.0, 60, 70, 55, 65, 80, 45, 75, 62, 58])
    assert core.sd_ratio(x, 50 + 0.5 * (x - 50)) == pytest.approx((0.5, 0.5, 0.5))  # paired: every resample 0.5
    assert core.sd_ratio(x, x + 7) == pytest.approx((1.0, 1.0, 1.0))  # a constant gain leaves the spread alone
    y = np.array([60.0, 62, 61, 66, 59, 64, 63, 60, 65, 61])
    ratio, lo, hi = core.sd_ratio(x, y)
    assert ratio == pytest.approx(y.std(ddof=1) / x.std(ddof=1)) and lo < ratio < hi < 1
    assert core.sd_ratio(x, y) == (ratio, lo, hi)  # a fixed generator: the page rebuilds byte for byte
    assert math.isnan(core.sd_ratio([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])  # ICL without spread: no ratio
    assert core.ratio_cell(ratio, lo, hi).endswith("▼") and core.ratio_cell(1.5, 1.2, 1.9).endswith("▲")
    assert core.ratio_cell(1.0, 0.8, 1.2) == "1.00 [0.80, 1.20]"


def test_the_spread_table_compares_each_methods_spread_over_seeds_with_icls_on_tasks_with_enough_seeds():
    icl = [0.50, 0.60, 0.70, 0.55, 0.65, 0.80, 0.45, 0.75, 0.62, 0.58]
    runs = [ift(s, [a, 0.6 + (a - 0.6) / 4], [0.1, 0.9]) for s, a in enumerate(icl)]  # IFT: a quarter the spread
    runs += [run("zero_shot", s, [0.5 + 0.01 * (s % 2)], [0.5]) for s in range(10)]
    runs += [ift(s, [a, a], [0.1, 0.9], task="mr") for s, a in enumerate(icl[:9])]  # 9 seeds: too few
    table = study_tables.spread_table(arms.candidates(runs))
    assert list(table["task"]) == ["sst2"]
    row = table.iloc[0]
    assert row["ICL sd"] == f"{100 * np.std(icl, ddof=1):.1f}"
    assert row["zero-shot sd (rows only)"] == f"{100 * np.std([0.5, 0.51] * 5, ddof=1):.1f}"
    assert row[f"{IFT_ALL}: sd / ICL sd"] == "0.25 [0.25, 0.25] ▼"


def test_arms_that_choose_among_the_same_runs_and_steps_are_one_arm_listed_once(tmp_path):
    one_setting = [ift(s, [0.6, 0.7], [0.5, 0.6]) for s in range(3)]
    twins = arms.twin_arms(arms.candidates(one_setting))
    # IFT over every setting is its one setting's arm, and the mode-and-β pool too; the headline is kept
    assert twins == {"IFT aligned β=0.9 (η, T on dev)": IFT_ALL, "IFT aligned β=0.9 η=0.01 (T on dev)": IFT_ALL}
    text = study.build(one_setting, tmp_path).read_text()
    overview = text.split("## Overview")[1].split("\n## ")[0]
    assert f"| {IFT_ALL} |" in overview and "| IFT aligned β=0.9 η=0.01 (T on dev) |" not in overview
    assert f"*{IFT_ALL}* is also *IFT aligned β=0.9 η=0.01 (T on dev)* and *IFT aligned β=0.9 (η, T on dev)*" in text
    assert "| IFT aligned β=0.9 η=0.01 (T on dev) |" in text.split("## Each arm at a fixed step")[1]  # per setting

    two_settings = one_setting + [ift(s, [0.6, 0.5], [0.5, 0.7], eta=0.1) for s in range(3)]
    # two η at one mode and β: the pool over η is every setting, each η its own arm
    assert arms.twin_arms(arms.candidates(two_settings)) == {"IFT aligned β=0.9 (η, T on dev)": IFT_ALL}
    settings = study.build(two_settings, tmp_path / "two").read_text().split("## IFT settings")[1]
    assert "| IFT aligned β=0.9 η=0.01 (T on dev) |" in settings and "| IFT aligned β=0.9 η=0.1 (T on dev) |" in settings
    # Gemma's two settings, one η per mode: each mode's pool is its setting, listed under the setting's label
    modes = one_setting + [ift(s, [0.6, 0.5], [0.5, 0.7], eta=0.1, mode="continue") for s in range(3)]
    assert arms.twin_arms(arms.candidates(modes)) == {
        "IFT aligned β=0.9 (η, T on dev)": "IFT aligned β=0.9 η=0.01 (T on dev)",
        "IFT continue β=0.9 (η, T on dev)": "IFT continue β=0.9 η=0.1 (T on dev)"}
    four = two_settings + [ift(s, [0.6, 0.4], [0.5, 0.8], eta=e, mode="continue") for s in range(3) for e in (0.01, 0.1)]
    assert arms.twin_arms(arms.candidates(four)) == {}  # every arm offers other candidates
    assert "listed once" not in study.build(four, tmp_path / "four").read_text()
