"""Each arm's dev candidates: the distinct states its dev rows chose among (analysis.study_tables.dev_candidates)."""
from test_study import IFT_ALL, ift

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
