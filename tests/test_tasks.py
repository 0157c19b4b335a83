"""ift.tasks: templates (golden strings), seeded sampling, local/hub loading, user tasks, bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pytest
import yaml
from taskdata import colour_rows, colour_task, write_split

from ift.tasks import Demonstrations, TaskError, TaskSpec, list_tasks, load_task

BENCHMARKS = ["agnews", "copa", "hellaswag", "mr", "obqa", "qasc", "sst2", "sst5", "trec", "winogrande"]


# --- one hand-written row per benchmark, in its hub schema, and the exact text it must render -------

ROWS = {
    "sst2": {"sentence": "a warm , funny and wise film ", "label": 1, "idx": 0},
    "sst5": {"text": "flat , slow and lifeless .", "label": 0, "label_text": "very negative"},
    "mr": {"text": "the plot wanders and the jokes fall flat .", "label": 0},
    "trec": {"text": "Who first climbed the tallest hill in town ?", "coarse_label": 3, "fine_label": 29},
    "agnews": {"text": "Shares climb after bank posts profit The bank said quarterly earnings rose.", "label": 2},
    "copa": {"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
             "choice2": "He got a hole in his sock.", "question": "cause", "idx": 0, "label": 0},
    "obqa": {"id": "1-1", "question_stem": "Which item lets heat pass through it most easily?",
             "choices": {"text": ["a wool sock", "a steel spoon", "a paper cup", "a foam block"],
                         "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "qasc": {"id": "q1", "question": "What do seeds need in order to sprout?",
             "choices": {"text": ["darkness", "salt", "water", "sand", "smoke", "ice", "noise", "oil"],
                         "label": ["A", "B", "C", "D", "E", "F", "G", "H"]}, "answerKey": "C",
             "fact1": "f1", "fact2": "f2", "combinedfact": "cf", "formatted_question": "fq"},
    "hellaswag": {"ind": 0, "activity_label": "Cycling", "ctx_a": "A boy kneels next to a bike. he",
                  "ctx_b": "", "ctx": "A boy kneels next to a bike. he",
                  "endings": ["eats the wheel.", "tightens the chain with a wrench.", "flies away.", "sings."],
                  "source_id": "", "split": "val", "split_type": "", "label": "1"},
    "winogrande": {"sentence": "Anna lent her umbrella to Beth because _ was going out in the rain.",
                   "option1": "Anna", "option2": "Beth", "answer": "2"},
}
EVAL_SPLIT = {"trec": "test", "agnews": "test"}

GOLDEN = {  # (context of the gold candidate, continuations, gold index)
    "sst2": ("Review: a warm , funny and wise film \nSentiment:", [" negative", " positive"], 1),
    "sst5": ("Review: flat , slow and lifeless .\nSentiment:",
             [" terrible", " negative", " neutral", " positive", " great"], 0),
    "mr": ("Review: the plot wanders and the jokes fall flat .\nSentiment:", [" negative", " positive"], 0),
    "trec": ("Question: Who first climbed the tallest hill in town ?\nType:",
             [" Abbreviation", " Entity", " Description", " Person", " Location", " Number"], 3),
    "agnews": ("Article: Shares climb after bank posts profit The bank said quarterly earnings rose.\nCategory:",
               [" World", " Sports", " Business", " Technology"], 2),
    "copa": ("The man broke his toe because",
             [" he dropped a hammer on his foot.", " he got a hole in his sock."], 0),
    "obqa": ("Which item lets heat pass through it most easily?",
             [" a wool sock.", " a steel spoon.", " a paper cup.", " a foam block."], 1),
    "qasc": ("What do seeds need in order to sprout?",
             [" darkness", " salt", " water", " sand", " smoke", " ice", " noise", " oil"], 2),
    "hellaswag": ("A boy kneels next to a bike. he",
                  [" eats the wheel.", " tightens the chain with a wrench.", " flies away.", " sings."], 1),
    "winogrande": ("Anna lent her umbrella to Beth because Beth",
                   [" was going out in the rain.", " was going out in the rain."], 1),
}
DEMONSTRATION = {
    "sst2": "Review: a warm , funny and wise film \nSentiment: positive",
    "sst5": "Review: flat , slow and lifeless .\nSentiment: terrible",
    "mr": "Review: the plot wanders and the jokes fall flat .\nSentiment: negative",
    "trec": "Question: Who first climbed the tallest hill in town ?\nType: Person",
    "agnews": "Article: Shares climb after bank posts profit The bank said quarterly earnings rose.\nCategory: Business",
    "copa": "The man broke his toe because he dropped a hammer on his foot.",
    "obqa": "Which item lets heat pass through it most easily? a steel spoon.",
    "qasc": "What do seeds need in order to sprout? water",
    "hellaswag": "A boy kneels next to a bike. he tightens the chain with a wrench.",
    "winogrande": "Anna lent her umbrella to Beth because Beth was going out in the rain.",
}


def test_builtin_tasks_listed():
    assert list_tasks() == sorted(BENCHMARKS + ["demo"])


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_task_renders_the_papers_template(tmp_path, name):
    write_split(tmp_path, name, EVAL_SPLIT.get(name, "validation"), [ROWS[name]])
    (ex,) = load_task(name, data_dir=tmp_path).eval_examples()
    context, continuations, gold = GOLDEN[name]
    assert ex.gold == gold and ex.index == 0
    assert list(ex.continuations) == continuations
    assert ex.contexts[gold] == context
    assert ex.demonstration == DEMONSTRATION[name]
    if name != "winogrande":  # every candidate shares the query
        assert len(set(ex.contexts)) == 1


def test_copa_effect_and_winogrande_per_candidate_contexts(tmp_path):
    write_split(tmp_path, "copa", "validation", [
        {"premise": "I tipped the bottle.", "choice1": "The water in it froze.",
         "choice2": "The water in it poured out.", "question": "effect", "idx": 0, "label": 1}])
    (ex,) = load_task("copa", data_dir=tmp_path).eval_examples()
    assert ex.contexts == ("I tipped the bottle therefore",) * 2
    assert ex.demonstration == "I tipped the bottle therefore the water in it poured out."
    write_split(tmp_path, "winogrande", "validation", [ROWS["winogrande"]])
    (ex,) = load_task("winogrande", data_dir=tmp_path).eval_examples()
    assert ex.contexts == ("Anna lent her umbrella to Beth because Anna", "Anna lent her umbrella to Beth because Beth")


def test_hellaswag_cleans_raw_hub_text(tmp_path):
    row = dict(ROWS["hellaswag"], ctx="[header] How to fold a shirt [title] Lay the shirt flat.",
               endings=["[step] Smooth out every wrinkle.", "b", "c", "d"], label="0")
    write_split(tmp_path, "hellaswag", "validation", [row])
    (ex,) = load_task("hellaswag", data_dir=tmp_path).eval_examples()
    assert ex.demonstration == "How to fold a shirt. Lay the shirt flat. Smooth out every wrinkle."


def test_unlabelled_rows_evaluate_with_gold_minus_one(tmp_path):
    write_split(tmp_path, "sst2", "test", [dict(ROWS["sst2"], label=-1)])
    write_split(tmp_path, "winogrande", "test", [dict(ROWS["winogrande"], answer="")])
    assert load_task("sst2", data_dir=tmp_path, eval_split="test").eval_examples()[0].gold == -1
    assert load_task("winogrande", data_dir=tmp_path, eval_split="test").eval_examples()[0].gold == -1


# --- sampling -----------------------------------------------------------------------------------

def test_stratified_demonstrations_give_n_per_class_shuffled(colours):
    task = colour_task(colours)
    for n in (1, 2, 4):
        demos = task.demonstrations(n, seed=3)
        golds = [i % 3 for i in demos.indices]
        assert sorted(golds) == sorted(list(range(3)) * n) and len(set(demos.indices)) == 3 * n
    demos = task.demonstrations(4, seed=3)
    assert [i % 3 for i in demos.indices] != sorted(i % 3 for i in demos.indices)  # shuffled, not by class
    texts = [task.example("demo_split", i).demonstration for i in demos.indices]
    assert demos.text == "\n\n".join(texts) + "\n\n" and demos.split == "train"
    assert set(task.demonstrations(1, seed=3).indices) <= set(task.demonstrations(2, seed=3).indices)
    assert task.demonstrations(0) == Demonstrations("", [], "train")


def test_seeds_are_deterministic_and_differ(colours):
    a, b = colour_task(colours), colour_task(colours)
    assert a.demonstrations(2, seed=1) == b.demonstrations(2, seed=1)
    assert a.demonstrations(2, seed=1).indices != a.demonstrations(2, seed=2).indices
    assert a.eval_examples(seed=5, limit=10) == b.eval_examples(seed=5, limit=10)
    assert [e.index for e in a.eval_examples(seed=5, limit=10)] != [e.index for e in a.eval_examples(seed=6, limit=10)]
    idx = [e.index for e in a.eval_examples(seed=5, limit=10)]
    assert idx == sorted(idx)  # subsample kept in source order


def test_same_seed_same_draw_on_any_machine():
    """Pinned values: numpy's SeedSequence/PCG64 streams, independent of the platform and PYTHONHASHSEED."""
    demos = load_task("demo").demonstrations(1, seed=0)
    assert demos.indices == [23, 9]
    assert demos.text == ("Sentence: The curry was rich with coconut milk.\nTopic: food\n\n"
                          "Sentence: Thunder rumbled over the hills.\nTopic: weather\n\n")


def test_multiple_choice_draws_n_labelled_examples(tmp_path):
    rows = [dict(ROWS["winogrande"], sentence=f"Row {i}: Anna met Beth and _ smiled.") for i in range(12)]
    rows[3]["answer"] = rows[7]["answer"] = ""  # unlabelled rows never become demonstrations
    write_split(tmp_path, "winogrande", "train", rows)
    write_split(tmp_path, "winogrande", "validation", [ROWS["winogrande"]])
    task = load_task("winogrande", data_dir=tmp_path, dev_size=0)
    for seed in range(10):
        demos = task.demonstrations(10, seed=seed)
        assert len(demos.indices) == 10 and not {3, 7} & set(demos.indices)


def test_shared_split_never_demonstrates_an_evaluated_row(colours, caplog):
    task = colour_task(colours, demo_split="test", eval_limit=12, dev_size=6)
    for seed in range(5):
        evaluated = {e.index for e in task.eval_examples(seed=seed)}
        with caplog.at_level(logging.WARNING, logger="ift.tasks"):
            demos = task.demonstrations(2, seed=seed)
        dev = {e.index for e in task.dev_examples(seed=seed)}
        assert len(evaluated) == 12 and len(dev) == 6
        assert not evaluated & set(demos.indices) and not evaluated & dev and not dev & set(demos.indices)
    assert "evaluation split" in caplog.text and "not among the 12 evaluated" in caplog.text
    with pytest.raises(TaskError, match="task.eval_limit=5"):
        task.eval_examples(limit=5)


def test_dev_set_is_held_out_from_demonstrations(colours):
    task = colour_task(colours, dev_size=15)
    for seed in range(5):
        dev = task.dev_examples(seed=seed)
        demos = task.demonstrations(5, seed=seed)
        assert len(dev) == 15 and not {e.index for e in dev} & set(demos.indices)
    assert len(task.dev_examples(5, seed=0)) == 5
    with pytest.raises(TaskError, match="task.dev_size=16"):
        task.dev_examples(16)


def test_demo_max_chars_draws_only_short_demonstrations_and_keeps_dev_and_eval_rows(tmp_path):
    rows = [{"text": "x" * (3 if i % 2 else 40) + f" {i}", "label": i % 3} for i in range(90)]
    write_split(tmp_path, "colours", "train", rows)
    write_split(tmp_path, "colours", "test", colour_rows(30, start=100))
    free, short = colour_task(tmp_path, dev_size=10), colour_task(tmp_path, dev_size=10, demo_max_chars=30)
    for seed in range(4):
        demos = short.demonstrations(2, seed=seed)
        texts = [short.example("demo_split", i).demonstration for i in demos.indices]
        assert all(len(t) <= 30 for t in texts) and sorted(i % 3 for i in demos.indices) == [0, 0, 1, 1, 2, 2]
        assert any(len(short.example("demo_split", i).demonstration) > 30 for i in free.demonstrations(2, seed).indices)
        assert short.dev_examples(seed=seed) == free.dev_examples(seed=seed)
        assert short.eval_examples(seed=seed, limit=10) == free.eval_examples(seed=seed, limit=10)
        # a limit no row exceeds draws exactly what no limit draws
        assert colour_task(tmp_path, dev_size=10, demo_max_chars=10_000).demonstrations(2, seed) == free.demonstrations(2, seed)
    with pytest.raises(TaskError, match=r"fit task.demo_max_chars=5; raise task.demo_max_chars or lower n"):
        colour_task(tmp_path, demo_max_chars=5).demonstrations(1)
    with pytest.raises(TaskError, match="demo_max_chars must be a positive integer"):
        colour_task(tmp_path, demo_max_chars=0)


# --- data sources ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_local_directory_in_each_format(tmp_path, fmt):
    write_split(tmp_path, "sst2", "train", [ROWS["sst2"], dict(ROWS["sst2"], sentence="dull .", label=0)], fmt)
    write_split(tmp_path, "sst2", "validation", [ROWS["sst2"]], fmt)
    task = load_task("sst2", data_dir=tmp_path, dev_size=0)
    assert task.eval_examples()[0].demonstration == DEMONSTRATION["sst2"]
    assert task.demonstrations(1).text.count("Review:") == 2


def test_nested_choices_from_parquet(tmp_path):
    write_split(tmp_path, "obqa", "validation", [ROWS["obqa"]], "parquet")
    assert load_task("obqa", data_dir=tmp_path).eval_examples()[0].demonstration == DEMONSTRATION["obqa"]


def test_data_dir_from_env_and_precedence(tmp_path, monkeypatch):
    env, arg = tmp_path / "env", tmp_path / "arg"
    write_split(env, "mr", "validation", [ROWS["mr"]])
    write_split(arg, "mr", "validation", [dict(ROWS["mr"], text="from the argument")])
    monkeypatch.setenv("IFT_DATA_DIR", str(env))
    assert load_task("mr").data_dir == env
    assert load_task("mr", data_dir=arg).eval_examples()[0].contexts[0] == "Review: from the argument\nSentiment:"
    monkeypatch.chdir(tmp_path)  # a Hydra-style node; a relative data_dir is taken from the working directory
    assert load_task({"name": "mr", "data_dir": "arg", "eval_limit": 1}).data_dir == arg
    assert load_task({"name": "mr", "data_dir": None}).data_dir == env


def test_bundled_demo_task_needs_no_configuration(monkeypatch, tmp_path):
    monkeypatch.setenv("IFT_DATA_DIR", str(tmp_path))  # the spec's own data_dir wins over the environment
    task = load_task("demo")
    assert len(task.eval_examples()) == 40 and {e.gold for e in task.eval_examples()} == {0, 1}
    assert len(task.split("demo_split")) == 40


# what `datasets.load_dataset` is asked for, checked against the hub (issue 43): (path, config, revision, eval
# split); every demo split is train. CogComp/trec is script-only on main: its parquet export has the config
# folder `default` with train and test, read without a config name
HUB = {"sst2": ("nyu-mll/glue", "sst2", None, "validation"), "sst5": ("SetFit/sst5", None, None, "validation"),
       "mr": ("cornell-movie-review-data/rotten_tomatoes", None, None, "validation"),
       "trec": ("CogComp/trec", None, "refs/convert/parquet", "test"),
       "agnews": ("fancyzhx/ag_news", None, None, "test"),
       "copa": ("aps/super_glue", "copa", None, "validation"),
       "obqa": ("allenai/openbookqa", "main", None, "validation"),
       "qasc": ("allenai/qasc", None, None, "validation"), "hellaswag": ("Rowan/hellaswag", None, None, "validation"),
       "winogrande": ("allenai/winogrande", "winogrande_xs", None, "validation")}


def test_every_built_in_hub_task_is_in_the_table():
    specs = Path(__file__).resolve().parents[1] / "ift" / "tasks" / "specs"
    with_hub = {p.stem for p in specs.glob("*.yaml") if yaml.safe_load(p.read_text()).get("hub")}
    assert set(HUB) == with_hub == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_hub_path_uses_current_dataset_ids(monkeypatch, name):
    """The exact call the loader makes for each split (path, config, split, revision), no network."""
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, revision, split, kwargs))
        return datasets.Dataset.from_list([ROWS[task_name]])

    task_name = name
    monkeypatch.delenv("IFT_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task(name)
    assert task.eval_examples()[0].demonstration == DEMONSTRATION[name]
    task.split("demo_split")
    path, config, revision, split = HUB[name]
    assert calls == [(path, config, revision, split, {}), (path, config, revision, "train", {})]


def test_hub_failure_says_how_to_go_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("IFT_DATA_DIR", raising=False)
    monkeypatch.setattr("ift.tasks.sources._HUB_FAILURES", {})
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskError, match=r"nyu-mll/glue.*no network.*IFT_DATA_DIR"):
        load_task("sst2")


# --- user-defined tasks ---------------------------------------------------------------------------

USER_YAML = """\
name: animals
data_dir: data            # relative to this file
template: "Q: Which animal is described? {clue}\\nA:"
choices_field: options
label_field: answer
label_values: [a, b, c]
eval_split: test
demo_split: train
dev_size: 2
"""


def write_user_task(root: Path) -> Path:
    rows = [{"clue": f"clue {i}", "options": ["cat", "dog", "cow"], "answer": "abc"[i % 3]} for i in range(9)]
    write_split(root / "data", "animals", "train", rows)
    write_split(root / "data", "animals", "test", rows[:4])
    path = root / "animals.yaml"
    path.write_text(USER_YAML)
    return path


def test_user_yaml_task(tmp_path):
    task = load_task(write_user_task(tmp_path))
    ex = task.eval_examples()[1]
    assert ex.demonstration == "Q: Which animal is described? clue 1\nA: dog"
    assert len(task.demonstrations(3, seed=0).indices) == 3 and len(task.dev_examples()) == 2
    with open(tmp_path / "animals.yaml") as fh:  # the same spec as a mapping (e.g. a Hydra task node)
        spec = yaml.safe_load(fh)
    assert load_task(dict(spec, data_dir=str(tmp_path / "data"))).eval_examples()[1] == ex


def test_hydra_task_node_overrides_a_builtin(tmp_path):
    from omegaconf import OmegaConf

    write_split(tmp_path, "agnews", "test", [dict(ROWS["agnews"], text=f"news {i}", label=i % 4) for i in range(40)])
    node = OmegaConf.create({"name": "agnews", "data_dir": str(tmp_path), "eval_limit": 8, "demo_split": "test",
                             "dev_size": 4})
    task = load_task(node)
    assert len(task.eval_examples()) == 8 and len(task.demonstrations(2).indices) == 8
    assert isinstance(task.spec, TaskSpec) and task.spec.template == "Article: {text}\nCategory:"
    assert len(load_task(task.spec, eval_limit=4).eval_examples()) == 4  # a TaskSpec is accepted too


def test_user_yaml_task_end_to_end_on_a_tiny_model(tmp_path, tiny_lm):
    scorer = pytest.importorskip("ift.scorer")
    task = load_task(write_user_task(tmp_path))
    demos = task.demonstrations(2, seed=0)
    examples = task.eval_examples()
    scores = scorer.score_examples(tiny_lm("llama"), examples, demonstrations=demos.text)
    assert [s.gold for s in scores] == [e.gold for e in examples] == [0, 1, 2, 0]
    assert all(len(s.sum_logprobs) == 3 for s in scores)
    acc, acc_norm = scorer.accuracy(scores)
    assert 0.0 <= acc <= 1.0 and 0.0 <= acc_norm <= 1.0
