"""Each arm's dev candidates: the distinct states its dev rows chose among (analysis.study_tables.dev_candidates)."""
from test_study import BASELINE_ARMS, IFT_ALL, ift, run

from analysis import arms, study_tables


def test_each_arm_counts_the_dev_candidates_it_chose_among():
    """One run's steps for one setting; a pooled arm every setting's steps with their shared step 1 (ICL) once;
    ICL step 1 alone; a run without dev scores on some steps offers only the others."""
    runs = [ift(seed, [0.5, 0.6, 0.7], [0.5, 0.6, 0.7], eta=eta) for seed in (0, 1) for eta in (0.01, 0.1)]
    runs[0].steps[2]["dev_acc"] = None  # seed 0, η 0.01: step 3 has no dev score
    table = study_tables.arm_table(arms.candidates(runs)).set_index("arm")
    assert table.loc["IFT aligned β=0.9 η=0.01 (T on dev)", "dev_candidates"] == [2, 3]
    assert table.loc["IFT aligned β=0.9 η=0.1 (T on dev)", "dev_candidates"] == [3, 3]
    assert table.loc[IFT_ALL, "dev_candidates"] == [4, 5] and table.loc[arms.ICL, "dev_candidates"] == [1, 1]
    shown = study_tables.format_arms(table.reset_index()).set_index("method (choice)")["dev candidates"]
    assert (shown[IFT_ALL], shown["IFT aligned β=0.9 η=0.1 (T on dev)"], shown[arms.ICL]) == ("4-5", "3", "1")


def test_a_run_and_its_continuation_offer_their_shared_steps_once():
    """A T=2 run and its continuation to T=4 (same setting and seed) offer steps 1-4: 4 candidates, not 6."""
    runs = [ift(0, [0.5, 0.6], [0.5, 0.6]), ift(0, [0.5, 0.6, 0.7, 0.4], [0.5, 0.6, 0.7, 0.8])]
    table = study_tables.arm_table(arms.candidates(runs)).set_index("arm")
    assert table.loc["IFT aligned β=0.9 η=0.01 (T on dev)", "dev_candidates"] == [4]
    assert table.loc[IFT_ALL, "dev_candidates"] == [4]


def capped(seed, fit, asked, accs=None, devs=None):
    """A repetition run whose model window let `fit` of its `asked` copies run (meta.json as window_cap writes it)."""
    accs = accs or [0.6] * fit
    return run("repeat", seed, accs, devs or [0.5] * fit, max_repeats=asked,
               window_cap={"setting": "method.max_repeats", "asked": asked, "fit": fit, "why": "too long"})


def test_seeds_of_a_window_capped_arm_that_fit_different_steps_are_one_configuration():
    runs = [capped(0, 3, 29), capped(1, 17, 29), capped(2, 29, 29)]
    runs += [run("zero_shot", s, [0.4], [0.4]) for s in range(3)]
    assert len({r.config_key() for r in runs[:3]}) == 1
    kept = arms.drop_incomplete(list(runs))
    assert len(kept) == 6 and all(r.skip is None for r in runs)
    # a run still counts its own steps: 3 recorded of the 3 that fit is complete, 2 of them is not
    from analysis.load import skip_reason

    assert skip_reason(runs[0]) is None
    short = capped(0, 3, 29)
    short.steps = short.steps[:2]
    assert skip_reason(short).startswith("incomplete: 2 of T=3")


def test_a_longer_grid_of_one_setting_joins_its_arm_and_dev_counts_its_steps():
    # seed 0 ran r <= 4 (its steps) and, later, r <= 6: the arm chooses among r = 1..6, each state counted once
    short = capped(0, 4, 4, [0.6, 0.6, 0.6, 0.6], [0.5, 0.5, 0.5, 0.5])
    short.meta.pop("window_cap")
    longer = capped(0, 6, 6, [0.6, 0.6, 0.6, 0.6, 0.6, 0.8], [0.5, 0.5, 0.5, 0.5, 0.5, 0.9])
    longer.meta.pop("window_cap")
    cands = arms.candidates([short, longer])
    pick = arms.choose(cands, "dev").set_index("arm").loc[BASELINE_ARMS["repeat"]]
    assert (pick["step"], pick["acc"]) == (6, 80.0)
    arm = cands[cands["arm"] == BASELINE_ARMS["repeat"]]
    assert study_tables.dev_candidates(arm, ["model", "task", "n_shot", "arm", "seed"]).tolist() == [6]
