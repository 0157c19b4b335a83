"""ift/protocol.py: the one dev-chosen-step rule and early stopping, and every user of them agrees."""
import math

import pandas as pd
import pytest

from analysis import arms, tables
from analysis.load import Run
from ift.experiment.store import summarize
from ift.protocol import CHEAPEST, COSTLIEST, LATEST, EarlyStopping, pick, pick_frame, score_of, stop_step

ROWS = [{"step": 1, "acc": 0.6, "acc_norm": 0.6, "dev_acc": 0.5}, {"step": 2, "acc": 0.8, "acc_norm": 0.8, "dev_acc": 0.7},
        {"step": 3, "acc": 0.8, "acc_norm": 0.8, "dev_acc": 0.7}, {"step": 4, "acc": 0.5, "acc_norm": 0.5, "dev_acc": None}]


def test_pick_takes_the_best_score_and_the_earliest_step_on_ties():
    assert pick(ROWS, "dev_acc")["step"] == 2 and pick(ROWS, "acc")["step"] == 2
    assert pick(ROWS, "dev_acc", tie=("-step",))["step"] == 3  # a tie rule is a key order: latest
    assert pick(ROWS, "dev_acc", tie=LATEST)["step"] == 3 and pick(ROWS, "acc", tie=LATEST)["step"] == 3
    assert pick([{"step": 1, "dev_acc": None}, {"step": 2, "dev_acc": math.nan}], "dev_acc") is None
    assert score_of("dev") == "dev_acc" and score_of("eval", "acc_norm") == "acc_norm"
    with pytest.raises(ValueError, match="protocol must be one of"):
        score_of("test")


def test_pick_frame_is_pick_per_group():
    frame = pd.DataFrame([{"g": 0, "run": "b", "tune_tokens": 20, "step": 2, "dev_acc": 70.0},
                          {"g": 0, "run": "a", "tune_tokens": 10, "step": 3, "dev_acc": 70.0},
                          {"g": 1, "run": "c", "tune_tokens": 10, "step": 1, "dev_acc": 50.0}])
    picked = pick_frame(frame, "dev_acc", ["g"], tie=CHEAPEST).set_index("g")
    assert list(picked["run"]) == ["a", "c"]  # equal dev accuracy: the fewer tuning tokens
    picked = pick_frame(frame, "dev_acc", ["g"], tie=COSTLIEST).set_index("g")
    assert list(picked["run"]) == ["b", "c"]  # its mirror image: the more tuning tokens


@pytest.mark.parametrize("dev, patience", [([0.5, 0.6, 0.6, 0.6, 0.9], 2), ([0.5, None, 0.4], 1),
                                           ([0.1, 0.2, 0.3], 2), ([0.3, 0.3, 0.3, 0.3], 3)])
def test_stop_step_is_where_early_stopping_stops(dev, patience):
    stop = EarlyStopping(patience)
    last = next((i + 1 for i, d in enumerate(dev) if stop.update(d)), len(dev))
    assert stop_step(dev, patience) == last == arms.early_stop(dev, patience)


def test_the_job_summary_and_the_report_choose_the_same_steps():
    run = Run("r", {"model": "m", "task": "sst2", "seed": 0, "n_shot": 1, "eta": 0.1, "beta": 0.9, "T": 4,
                    "position_mode": "aligned", "method": "ift", "status": "finished"}, ROWS, {"status": "finished"})
    per_run = tables.run_results([run]).iloc[0]
    summary = summarize(ROWS)
    assert (summary["dev_step"], summary["best_eval_step"]) == (per_run["dev_step"], per_run["best_step"]) == (2, 2)
    assert summary["dev_step_acc"] * 100 == pytest.approx(per_run["dev_step_acc"])
