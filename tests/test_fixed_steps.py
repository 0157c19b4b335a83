"""analysis.fixed_steps: each arm at every fixed step beside its dev-chosen step, hand-computed."""
import numpy as np
import pytest
from scipy import stats

from analysis import arms
from analysis.core import marked, signed
from analysis.fixed_steps import fixed_step_intervals, fixed_step_table
from analysis.load import Run

IFT_DEFAULT = "IFT aligned β=0.9 η=0.1 (T on dev)"
RANDOM = "random direction aligned β=0.9 η=0.1 (T on dev)"


def run(method, seed, accs, devs):
    steps = [{"step": i + 1, "acc": a, "acc_norm": a, "dev_acc": d, "dev_acc_norm": d, "tune_tokens": 10 * (i + 1),
              "prefix_tokens": 10} for i, (a, d) in enumerate(zip(accs, devs))]
    meta = {"model": "m", "task": "sst2", "n_shot": 1, "seed": seed, "T": len(accs), "method": method,
            "status": "finished", "eta": 0.1, "beta": 0.9, "position_mode": "aligned"}
    return Run(f"{method}/{seed}", meta, steps, {"status": "finished"})


def half(values):
    v = np.asarray(values, dtype=float)
    return stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))


def test_each_arm_reports_its_candidates_every_fixed_step_and_the_dev_choice():
    icl = [0.50, 0.60, 0.70]
    ift = {0: ([0.50, 0.60, 0.40], [0.1, 0.3, 0.2]),   # dev picks step 2
           1: ([0.60, 0.62, 0.50], [0.1, 0.1, 0.9]),   # dev picks step 3
           2: ([0.70, 0.75, 0.60], [0.4, 0.4, 0.4])}   # a tie: the earliest step, ICL
    rnd = {s: ([icl[s], icl[s] - 0.1, icl[s] + 0.2], [0.2, 0.1, 0.1]) for s in range(3)}  # dev keeps step 1
    runs = [run("ift", s, *ift[s]) for s in range(3)] + [run("random_direction", s, *rnd[s]) for s in range(3)]
    table = fixed_step_table(arms.candidates(runs)).set_index("method (choice)")
    assert list(table.index) == [RANDOM, IFT_DEFAULT]  # the page's rank: the control before the subject

    row = table.loc[IFT_DEFAULT]
    assert row["seeds"] == 3 and row["dev candidates"] == "3"
    chosen = 100 * np.array([0.60 - 0.50, 0.50 - 0.60, 0.0])
    assert row["Δ vs ICL, step chosen on dev"] == signed(chosen.mean(), half(chosen))
    step2 = 100 * np.array([0.10, 0.02, 0.05])  # the best mean eval accuracy: step 2
    assert row["best fixed step on eval (bound)"] == f"2: {marked(step2.mean(), half(step2))}"
    assert not row["best fixed step on eval (bound)"].endswith("▲")  # 3 seeds: the interval spans 0
    step3 = 100 * np.array([-0.10, -0.10, -0.10])
    assert row["last step"] == "3: -10.0 ± 0.0 ▼"
    assert row["mean Δ at fixed step 2, 3, …"] == f"{step2.mean():+.1f}, {step3.mean():+.1f}"

    row = table.loc[RANDOM]
    assert row["Δ vs ICL, step chosen on dev"] == "+0.0 ± 0.0"
    assert row["best fixed step on eval (bound)"].startswith("3: +20.0")
    assert row["mean Δ at fixed step 2, 3, …"] == "-10.0, +20.0"


def test_a_seed_with_fewer_steps_shows_its_candidates_as_a_range_and_no_last_step_interval():
    runs = [run("ift", 0, [0.5, 0.6, 0.7], [0.1, 0.2, 0.3]), run("ift", 1, [0.5, 0.6], [0.1, 0.2])]
    row = fixed_step_table(arms.candidates(runs)).set_index("method (choice)").loc[IFT_DEFAULT]
    assert row["dev candidates"] == "2-3"
    assert row["last step"] == "3: some seeds stop earlier"
    assert row["mean Δ at fixed step 2, 3, …"] == "+10.0"


def test_a_page_of_one_step_arms_has_no_table():
    runs = [run("zero_shot", s, [0.5], [0.5]) for s in range(2)]
    assert fixed_step_table(arms.candidates(runs)).empty


@pytest.mark.parametrize("method", ["dev_demos", "calibrate"])
def test_the_controls_get_their_rows_by_what_they_declare(method):
    runs = [run(method, s, [0.5, 0.6], [0.2, 0.3]) for s in range(2)]
    table = fixed_step_table(arms.candidates(runs))
    assert len(table) == 1 and table.iloc[0]["Δ vs ICL, step chosen on dev"] == "+10.0 ± 0.0 ▲"


def test_every_fixed_step_gets_its_own_paired_interval():
    icl = [0.50, 0.60, 0.70]
    runs = [run("ift", s, [icl[s], icl[s] + d2, icl[s] + d3], [0.1, 0.2, 0.3])
            for s, (d2, d3) in enumerate([(0.10, -0.10), (0.02, -0.12), (0.06, -0.08)])]
    row = fixed_step_intervals(arms.candidates(runs)).set_index("method (choice)").loc[IFT_DEFAULT]
    step2, step3 = 100 * np.array([0.10, 0.02, 0.06]), 100 * np.array([-0.10, -0.12, -0.08])
    assert row["seeds"] == 3
    assert row["step 2"] == marked(step2.mean(), half(step2))       # 6.0 ± 9.9: spans 0, no mark
    assert row["step 3"] == marked(step3.mean(), half(step3)) and row["step 3"].endswith("▼")
    assert "step 1" not in row.index  # step 1 is ICL itself


def test_arms_of_unequal_length_share_the_step_columns_in_order():
    short = [run("ift", s, [0.5, 0.6], [0.1, 0.2], ) for s in range(2)]
    long = [run("random_direction", s, [0.5, 0.4, 0.3, 0.2], [0.1, 0.1, 0.1, 0.1]) for s in range(2)]
    table = fixed_step_intervals(arms.candidates(long + short)).set_index("method (choice)")
    assert [c for c in table.columns if c.startswith("step")] == ["step 2", "step 3", "step 4"]
    assert table.loc[IFT_DEFAULT, "step 4"] == "" and table.loc[RANDOM, "step 4"] == "-30.0 ± 0.0 ▼"
