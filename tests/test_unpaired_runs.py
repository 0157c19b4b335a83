"""Runs a page may not pair stop it in one line (analysis.arms.UnpairedRuns): one seed's runs disagree at ICL,
or one configuration's runs declare different arms."""
import json

import pytest
from test_study import run

from analysis import arms, study


def test_runs_of_one_seed_that_disagree_at_icl_stop_the_page_in_one_line(tmp_path, capsys):
    """bf16-mixed runs of one configuration made on two CPUs differ at ICL by a few points: the page refuses to
    pair them, naming the seeds and the likely cause, without a traceback."""

    for i, first in enumerate((0.70, 0.72)):  # the same seed's ICL, as two machines computed it
        where = tmp_path / "runs" / f"job{i}"
        where.mkdir(parents=True)
        method = "ift" if i == 0 else "repeat"
        meta = {"model": "m", "task": "sst2", "n_shot": 1, "seed": 3, "T": 2, "method": method, "status": "finished",
                "mode": "tune", "eta": 0.1 if i == 0 else None, "beta": 0.9 if i == 0 else None,
                "position_mode": "aligned" if i == 0 else None}
        steps = [{"step": s, "acc": a, "acc_norm": a, "dev_acc": 0.5, "dev_acc_norm": 0.5, "tune_tokens": 10,
                  "prefix_tokens": 10} for s, a in ((1, first), (2, 0.75))]
        (where / "meta.json").write_text(json.dumps(meta))
        (where / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
        (where / "summary.json").write_text(json.dumps({"status": "finished", "last_step": 2}))
    with pytest.raises(SystemExit) as stop:
        study.main([str(tmp_path / "runs"), "--out", str(tmp_path / "page"), "--allow-missing"])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "on 1 of 1 seeds (sst2 seed 3 (2 points))" in err and "bf16-mixed" in err
    assert not (tmp_path / "page" / "study.md").exists()


def test_runs_of_one_configuration_that_declare_different_arms_are_refused():
    """A method's declaration (meta.json method_info) changed between seeds: a pooled arm would hold only the
    newer seeds, so the page refuses instead of pairing part of an arm."""
    from ift.experiment.methods import REGISTRY

    info = REGISTRY["grad"].info({"lr": 0.01})
    older = run("grad", 0, [0.6, 0.7], [0.5, 0.6], lr=0.01, method_info=info)
    newer = run("grad", 1, [0.6, 0.7], [0.5, 0.6], lr=0.01,
                method_info={**info, "pools": [["", "lr, steps"]]})
    assert arms.arms_of(older) != arms.arms_of(newer)
    with pytest.raises(arms.UnpairedRuns, match=r"declare different arms: .*grad/0.* but .*grad/1"):
        arms.candidates([older, newer])
    arms.candidates([older, run("grad", 1, [0.6, 0.7], [0.5, 0.6], lr=0.01, method_info=info)])  # same: fine
