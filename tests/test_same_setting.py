"""analysis.same_setting: the subject minus each control run with its settings, setting by setting, hand-computed."""
import numpy as np
from test_fixed_steps import IFT_DEFAULT, RANDOM, half, run

from analysis import arms
from analysis.core import signed
from analysis.same_setting import same_setting_table


def with_setting(r, mode, eta):
    r.meta.update(position_mode=mode, eta=eta)
    r.id = f"{r.id}/{mode}/{eta}"
    return r


def test_a_control_is_set_against_the_subject_at_its_own_settings_only():
    # IFT in two settings; the random direction in the default one only (a control part-way through its plan)
    ift = {s: ([0.5, 0.6 + 0.05 * s, 0.4], [0.1, 0.3, 0.2]) for s in range(3)}       # dev picks step 2
    paper = {s: ([0.5, 0.9, 0.9], [0.1, 0.2, 0.9]) for s in range(3)}                  # dev picks step 3
    rnd = {s: ([0.5, 0.55, 0.7 - 0.1 * s], [0.1, 0.1, 0.5]) for s in range(3)}        # dev picks step 3
    runs = ([run("ift", s, *ift[s]) for s in range(3)]
            + [with_setting(run("ift", s, *paper[s]), "continue", 0.01) for s in range(3)]
            + [run("random_direction", s, *rnd[s]) for s in range(3)])
    table = same_setting_table(arms.candidates(runs))
    assert len(table) == 1  # the continue setting has no control: no row, however IFT did there
    row = table.iloc[0]
    assert (row["setting"], row["subject (choice)"], row["control (choice)"]) == ("aligned β=0.9 η=0.1", IFT_DEFAULT,
                                                                                  RANDOM)
    assert row["seeds"] == 3 and row["dev candidates (subject / control)"] == "3 / 3"
    diff = 100 * (np.array([0.6 + 0.05 * s for s in range(3)]) - np.array([0.7 - 0.1 * s for s in range(3)]))
    assert row["subject − control"] == signed(diff.mean(), half(diff))  # -10, +5, +20: no mark, the interval spans 0


def test_no_control_with_the_subjects_settings_gives_no_table():
    runs = [run("ift", s, [0.5, 0.6], [0.1, 0.2]) for s in range(2)] + [run("zero_shot", s, [0.4], [0.1])
                                                                         for s in range(2)]
    assert same_setting_table(arms.candidates(runs)).empty
