"""The local benchmark mirror (../shared/data, or $IFT_DATA_DIR) loads with the row counts of its README."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ift.tasks import TaskError, load_task

MIRROR = Path(os.environ.get("IFT_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (MIRROR / "README.md").is_file(), reason=f"no data mirror at {MIRROR}")]

ROWS = {  # from the mirror's README
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "sst5": {"train": 8544, "validation": 1101, "test": 2210},
    "mr": {"train": 8530, "validation": 1066, "test": 1066},
    "trec": {"train": 5452, "test": 500},
    "agnews": {"test": 7600},
    "copa": {"train": 400, "validation": 100, "test": 500},
    "hellaswag": {"validation": 10042},
    "obqa": {"train": 4957, "validation": 500, "test": 500},
    "winogrande": {"train": 160, "validation": 1267, "test": 1767},
}
FIRST_EVAL = {  # the demonstration text of each task's first evaluated example
    "sst2": "Review: it 's a charming and often affecting journey . \nSentiment: positive",
    "sst5": "Review: in his first stab at the form , jacquot takes a slightly anarchic approach that works only "
            "sporadically .\nSentiment: neutral",
    "mr": "Review: compassionately explores the seemingly irreconcilable situation between conservative christian "
          "parents and their estranged gay and lesbian children .\nSentiment: positive",
    "trec": "Question: How far is it from Denver to Aspen ?\nType: Number",
    "copa": "The man turned on the faucet therefore water flowed from the spout.",
    "obqa": "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known "
            "as Deep sea animals.",
    "winogrande": "Sarah was a much better surgeon than Maria so Maria always got the easier cases.",
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_mirror_task_loads_with_readme_row_counts(name):
    for split, n in ROWS[name].items():
        task = load_task(name, data_dir=MIRROR, eval_split=split, eval_limit=3)
        assert len(task.split("eval_split")) == n, split
        assert len(task.eval_examples()) == 3  # every split renders
    task = load_task(name, data_dir=MIRROR)
    examples = task.eval_examples()
    expected = {"agnews": 2000, "hellaswag": 2000}.get(name, ROWS[name][task.spec.eval_split])
    assert len(examples) == expected and all(e.gold >= 0 for e in examples)
    if name in FIRST_EVAL:
        assert examples[0].demonstration == FIRST_EVAL[name]
        assert task.demonstrations(1, seed=0).text.endswith("\n\n")
    else:  # the mirror has no train split: the error names the override that helps
        with pytest.raises(TaskError, match=r"task.demo_split=(test|validation)"):
            task.demonstrations(1)
        other = load_task(name, data_dir=MIRROR, demo_split=task.spec.eval_split)
        evaluated = {e.index for e in other.eval_examples()}
        assert not evaluated & set(other.demonstrations(2, seed=0).indices)


def test_qasc_is_not_in_the_mirror_and_the_error_says_so():
    with pytest.raises(TaskError, match=r"no folder .*qasc.*task.data_dir"):
        load_task("qasc", data_dir=MIRROR)
