"""ift.tasks, bad input: every error is a TaskError raised before any model is involved, naming the field,
file or split and what would fix it (the helpers and golden rows are test_tasks.py's)."""
from __future__ import annotations

import json
import re

import datasets
import pytest
from taskdata import colour_rows, colour_task, write_split
from test_tasks import EVAL_SPLIT, ROWS

from ift.tasks import TaskError, load_task

# --- bad input: every error is a TaskError raised before any model is involved --------------------

def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError, match=r"unknown task 'sst3'.*agnews, copa, demo.*winogrande"):
        load_task("sst3")
    with pytest.raises(TaskError, match=r"unknown task 'sst3'"):
        load_task({"name": "sst3", "eval_limit": 5})


def test_missing_column_is_named_with_the_columns_found(tmp_path):
    write_split(tmp_path, "trec", "test", [{"text": "Who ?", "label-coarse": 3}])
    with pytest.raises(TaskError, match=r"column 'coarse_label' \(from label_field\) is missing.*\['text', 'label-coarse'\]"):
        load_task("trec", data_dir=tmp_path)


def test_template_placeholder_without_a_field(colours):
    with pytest.raises(TaskError, match=r"template placeholder \{sentence\} has no matching field.*\['text', 'label'\]"):
        colour_task(colours, template="Item: {sentence}\nColour:")


def test_label_outside_the_label_words(colours):
    write_split(colours, "colours", "test", [{"text": "x", "label": 3}])
    with pytest.raises(TaskError, match=r"label=3 is outside the label words \['red', 'green', 'blue'\]"):
        colour_task(colours)


def test_empty_split(tmp_path):
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr" / "validation.jsonl").write_text("")
    with pytest.raises(TaskError, match="split 'validation' in .* is empty"):
        load_task("mr", data_dir=tmp_path)


def test_more_shots_than_a_class_has(colours):
    task = colour_task(colours, dev_size=0)
    task.demonstrations(20)
    with pytest.raises(TaskError, match=r"21 demonstrations per class asked, but label 'red' has only 20"):
        task.demonstrations(21)


def test_missing_split_names_the_override(tmp_path):
    write_split(tmp_path, "agnews", "test", [ROWS["agnews"]])
    task = load_task("agnews", data_dir=tmp_path)
    with pytest.raises(TaskError, match=r"split 'train' \(demo_split\) is missing in .*agnews.*task.demo_split=test"):
        task.demonstrations(1)
    with pytest.raises(TaskError, match=r"no folder .*qasc"):
        load_task("qasc", data_dir=tmp_path)


@pytest.mark.parametrize("bad_row, field", [
    ({"sentence": None, "label": 0, "idx": 1}, "sentence"),   # null cell
    ({"label": 0, "idx": 1}, "sentence"),                     # key missing from the JSON row
    ({"sentence": "fine .", "label": None, "idx": 1}, "label"),  # a null label is not "unlabelled"
])
def test_missing_or_null_field_in_a_later_eval_row_is_named(tmp_path, bad_row, field):
    """Only the first row's columns used to be checked: later rows rendered as the text "None"."""
    path = write_split(tmp_path, "sst2", "validation", [ROWS["sst2"], bad_row, ROWS["sst2"]])
    task = load_task("sst2", data_dir=tmp_path)
    with pytest.raises(TaskError, match=rf"row 1 of split 'validation' in {re.escape(str(path))}: "
                                        rf"field '{field}'.* is missing or null"):
        task.eval_examples()


def test_null_field_in_a_demonstration_or_dev_row_is_named(tmp_path):
    rows = colour_rows(6)
    rows[4]["text"] = None
    path = write_split(tmp_path, "colours", "train", rows)
    write_split(tmp_path, "colours", "test", colour_rows(3, start=100))
    task = colour_task(tmp_path)
    message = rf"row 4 of split 'train' in {re.escape(str(path))}: field 'text' is missing or null"
    with pytest.raises(TaskError, match=message):
        task.demonstrations(2)
    for row in rows[1:]:
        row["text"] = None
    write_split(tmp_path, "colours", "train", rows)
    dev = colour_task(tmp_path, dev_size=5, stratify=False)
    with pytest.raises(TaskError, match=message.replace("row 4", r"row [1-5]")):
        dev.dev_examples()


@pytest.mark.parametrize("name, change, message", [
    ("obqa", lambda r: r["choices"]["text"].__setitem__(2, None), r"field 'choices.text' holds a null choice"),
    ("obqa", lambda r: r.update(question_stem=None), r"field 'question_stem' is missing or null"),
    ("copa", lambda r: r.update(premise=None), r"field 'premise' is missing or null"),
    ("winogrande", lambda r: r.update(option2=None), r"field 'option2' is missing or null"),
])
def test_null_choice_or_formatter_field_is_named(tmp_path, name, change, message):
    bad = json.loads(json.dumps(ROWS[name]))
    change(bad)
    split = EVAL_SPLIT.get(name, "validation")
    write_split(tmp_path, name, split, [ROWS[name], bad])
    with pytest.raises(TaskError, match=rf"row 1 of split '{split}' in .*{name}.*: {message}"):
        load_task(name, data_dir=tmp_path).eval_examples()


@pytest.mark.parametrize("content, cause", [
    (b'{"text": "a", "label": 0}\n{"text": "caf\xe9 \xff", "label": 1}\n', r"the file is not UTF-8: byte 0xe9 .*\(line 2\)"),
    (b'{"text": "a", "label": 0}\n{"text": "b", "lab', r"the last line \(2\) is truncated"),
    (b'{"text": "a", "label": 0}\n{"text": b", "label": 1}\n{"text": "c", "label": 2}\n',
     r"malformed JSON at line 2"),
])
def test_unreadable_data_file_names_the_file_split_and_cause(tmp_path, content, cause):
    folder = tmp_path / "colours"
    folder.mkdir()
    (folder / "test.jsonl").write_bytes(content)
    with pytest.raises(TaskError, match=rf"cannot read split 'test' from {re.escape(str(folder / 'test.jsonl'))}: "
                                        rf"{cause}"):
        colour_task(tmp_path)


def test_failed_hub_load_is_not_retried_in_the_same_process(monkeypatch):
    from ift.tasks import sources

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network")

    monkeypatch.delenv("IFT_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "_HUB_FAILURES", {})
    monkeypatch.setattr(datasets, "load_dataset", offline)
    for _ in range(3):
        with pytest.raises(TaskError, match=r"nyu-mll/glue.*no network.*IFT_DATA_DIR.*HF_HUB_OFFLINE=1"):
            load_task("sst2")
    assert len(calls) == 1
    with pytest.raises(TaskError, match="cornell-movie-review-data"):  # another source is tried on its own
        load_task("mr")
    assert len(calls) == 2


@pytest.mark.parametrize("spec, message", [
    ({"template": "{text", "label_words": ["a"]}, "malformed"),
    ({"template": "{text!r}", "label_words": ["a"]}, "plain field name"),
    ({"template": "{text}"}, "exactly one of label_words"),
    ({"template": "{text}", "label_words": ["a"], "formatter": "fancy"}, r"unknown formatter 'fancy'.*copa"),
    ({"template": "{text}", "label_words": ["a"], "n_shot": 4}, r"unknown key\(s\) \['n_shot'\]"),
    ({"template": "{text}", "choices_field": "c", "stratify": True}, "stratify needs label_words"),
])
def test_bad_specs(spec, message):
    with pytest.raises(TaskError, match=message):
        load_task({"name": "mine", **spec})
