"""The subject against each control that runs with its settings, setting by setting: as many dev candidates each.

The head-to-head table sets IFT with every setting chosen on dev against each baseline's own choice. A control
declared with IFT's settings (the random direction: IFT's update sizes at one position mode, β and η) offers as
many candidates there only once it has run every setting IFT has; setting by setting the two sides offer the
same steps, so this table is matched while a control has run some settings only. Arms are paired by their
settings (`Arm.detail`), never by a method's name.
"""
from __future__ import annotations

import pandas as pd

from analysis.arms import RIVAL, STEP, SUBJECT, choose
from analysis.core import interval, marked
from analysis.study_tables import dev_candidates, span

GROUP = ["model", "task", "n_shot", "arm"]


def same_setting_table(cands: pd.DataFrame) -> pd.DataFrame:
    """Per task and setting: the subject's one-setting arm minus each control arm with the same settings, both
    with their step chosen on dev, paired by seed (mean ± 95% interval; ▲ / ▼ where it excludes 0), with each
    side's dev candidates per seed. Empty when no control shares a setting with the subject."""
    step_arms = cands[cands["choice"] == STEP]
    specs = {a.label: a for a in step_arms["arm_spec"]} if not step_arms.empty else {}
    pairs = [(s, c) for s in specs.values() if s.role == SUBJECT and s.detail
             for c in specs.values() if c.role == RIVAL and c.detail == s.detail]
    if not pairs:
        return pd.DataFrame()
    used = step_arms[step_arms["arm"].isin({a.label for pair in pairs for a in pair})]
    picks = {key: g.set_index("seed")["acc"] for key, g in choose(used, "dev").groupby(GROUP)}
    offered = dev_candidates(used, GROUP)
    rows = []
    for (model, task, n_shot), _ in used.groupby(["model", "task", "n_shot"], sort=True):
        for subject, control in sorted(pairs, key=lambda p: (p[0].detail, p[1].rank, p[1].label)):
            mine, theirs = (picks.get((model, task, n_shot, a.label)) for a in (subject, control))
            if mine is None or theirs is None:
                continue
            common = mine.index.intersection(theirs.index)
            d, h, _ = interval((mine[common] - theirs[common]).tolist())
            counts = [span([int(offered[(model, task, n_shot, a.label, s)]) for s in common])
                      for a in (subject, control)]
            rows.append({"task": task, "setting": subject.detail, "subject (choice)": subject.label,
                         "control (choice)": control.label, "seeds": len(common),
                         "dev candidates (subject / control)": " / ".join(counts),
                         "subject − control": marked(d, h)})
    return pd.DataFrame(rows)
