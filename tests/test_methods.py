"""The study methods through run_job on a tiny model: the same demonstrations and rows for every method,
equivalences with the engine's baselines, store keys, resuming baselines, and the study page from real jobs."""
import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import ift
from analysis import study
from analysis.load import load as load_runs
from ift.baselines import repeat_demonstrations
from ift.experiment import run_job
from ift.experiment.job import load_model_once, prepare
from ift.experiment.methods import REGISTRY
from ift.tasks import load_task
from jobs import Killed, kill_at
from jobs import job_cfg as cfg
from jobs import step_rows as rows

ROOT = Path(__file__).resolve().parents[1]



def meta(result) -> dict:
    return json.loads((Path(result["store"]) / "meta.json").read_text())


@pytest.mark.slow
def test_every_method_reads_the_same_demonstrations_and_rows(tiny_dir, tmp_path):
    runs = {m: run_job(cfg(tiny_dir, tmp_path, f"method={m}", "optim.T=3", *extra))
            for m, extra in (("ift", ()), ("repeat", ("method.max_repeats=2",)), ("more_demos", ("method.max_factor=2",)),
                             ("grad", ()), ("zero_shot", ()))}
    assert {m: r["status"] for m, r in runs.items()} == dict.fromkeys(runs, "finished")
    first = {m: rows(r)[0] for m, r in runs.items()}
    for m in ("repeat", "more_demos", "grad"):  # step 1 is plain ICL for every method with demonstrations
        assert (first[m]["acc"], first[m]["dev_acc"]) == (first["ift"]["acc"], first["ift"]["dev_acc"]), m
        assert meta(runs[m])["demonstrations"] == meta(runs["ift"])["demonstrations"]
    assert [len(rows(runs[m])) for m in runs] == [3, 2, 2, 3, 1]
    assert first["zero_shot"]["prefix_tokens"] == 0
    # compute: IFT's step t reads the L demonstration tokens t times; grad also runs backward passes
    L = first["ift"]["prefix_tokens"]
    assert [r["tune_tokens"] for r in rows(runs["ift"])] == [L, 2 * L, 3 * L]
    assert rows(runs["repeat"])[1]["prefix_tokens"] > 1.9 * L - 2
    assert rows(runs["grad"])[2]["backward_tokens"] > 0 and rows(runs["ift"])[2]["backward_tokens"] == 0
    m = meta(runs["repeat"])
    assert (m["method"], m["eta"], m["beta"], m["position_mode"], m["T"], m["max_repeats"]) == \
        ("repeat", None, None, None, 2, 2)
    for name, result in runs.items():  # what the pages read of each method, written by the job (MethodInfo)
        info = meta(result)["method_info"]
        assert info == json.loads(json.dumps(REGISTRY[name].info(meta(result)))) and info["candidates"] == \
            len(rows(result)), name
    cos = meta(runs["grad"])["pseudo_grad_cosine"]
    assert set(cos) == {"continue", "aligned"} and len(cos["aligned"]["k"]) == 2  # one per layer
    # the study page reads them all back, none skipped
    loaded = load_runs([tmp_path])
    assert [r.skip for r in loaded] == [None] * 5
    page = study.build(loaded, tmp_path / "page").read_text()
    assert "ICL ×r (r on dev)" in page and "gradient tuning lr=0.001" in page and "zero-shot" in page


@pytest.mark.slow
def test_repetition_scores_like_concatenated_icl_of_the_repeated_text(tiny_dir, tmp_path):
    result = run_job(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=2"))
    ready = prepare(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=2"))
    lm = load_model_once(str(tiny_dir), "fp32", "auto", "none", False)
    for r, row in enumerate(rows(result), start=1):
        text = repeat_demonstrations(ready.demos.text, r)
        acc, _ = ift.accuracy(ift.score_examples(lm, ready.examples, demonstrations=text))
        assert row["acc"] == acc
    assert rows(result)[0]["acc"] == ift.accuracy(ift.score_examples(lm, ready.examples,
                                                                      demonstrations=ready.demos.text))[0]


def test_more_demonstrations_are_a_superset_drawn_with_the_same_seed(tiny_dir, tmp_path):
    task = load_task("demo")
    one, two = task.demonstrations(1, seed=3), task.demonstrations(2, seed=3)
    assert set(one.indices) < set(two.indices)
    result = run_job(cfg(tiny_dir, tmp_path, "method=more_demos", "method.max_factor=2", "seed=3"))
    assert [r["n_demonstrations"] for r in rows(result)] == [2, 4]  # two classes


@pytest.mark.slow
def test_baselines_are_keyed_without_ift_settings_and_ift_with_them(tiny_dir, tmp_path):
    a = run_job(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=2", "optim.eta=0.1"))
    b = run_job(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=2", "optim.eta=0.5"))
    assert b["skipped"] and b["store"] == a["store"]  # η does not change a repetition baseline
    c = run_job(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=3"))
    assert c["store"] != a["store"]
    d = run_job(cfg(tiny_dir, tmp_path, "optim.T=2", "optim.eta=0.1"))
    e = run_job(cfg(tiny_dir, tmp_path, "optim.T=2", "optim.eta=0.5"))
    assert d["store"] != e["store"] and not e["skipped"]


@pytest.mark.slow
def test_a_killed_baseline_keeps_its_finished_steps(tiny_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ift")
    with pytest.raises(Killed):
        run_job(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=3"), on_step=kill_at(1))
    seen = []
    result = run_job(cfg(tiny_dir, tmp_path, "method=repeat", "method.max_repeats=3"), on_step=seen.append)
    assert [r["step"] for r in seen] == [2, 3]  # step 1 was not computed again
    assert [r["step"] for r in rows(result)] == [1, 2, 3] and result["summary"]["icl_acc"] == rows(result)[0]["acc"]
    assert "keeping recorded step(s) 1" in caplog.text


@pytest.mark.parametrize("overrides, message", [
    (["method=nope"], "Could not find 'method/nope'"),
])
def test_an_unknown_method_is_hydras_error(tiny_dir, tmp_path, overrides, message):
    with pytest.raises(Exception, match=message):
        cfg(tiny_dir, tmp_path, *overrides)


@pytest.mark.parametrize("overrides, message", [
    (["method=repeat", "method.max_repeats=0"], "method.max_repeats must be an integer >= 1"),
    (["method=more_demos", "method.max_factor=-1"], "method.max_factor must be an integer >= 1"),
    (["method=grad", "method.lr=0"], "method.lr must be a finite number > 0"),
    (["method=grad", "method.lr=inf"], "method.lr must be a finite number > 0"),
    (["method.name=sgd"], "method.name='sgd' is unknown; choose one of"),
    (["method=repeat", "mode=efficiency"], "method=repeat cannot run in mode=efficiency"),
    (["method=more_demos", "method.max_factor=40"], "demonstrations per class asked"),
])
def test_bad_method_settings_fail_before_the_store_and_the_model(tiny_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_job(cfg(tiny_dir, tmp_path / "r", *overrides))
    assert not (tmp_path / "r").exists()


def test_the_gradient_baseline_refuses_a_single_demonstration_before_the_store(tiny_dir, tmp_path):
    data = tmp_path / "mc" / "data" / "qa"
    data.mkdir(parents=True)
    rows = [{"q": f"Question {i}?", "options": ["yes", "no"], "answer": i % 2} for i in range(8)]
    for split in ("train", "test"):
        data.joinpath(f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "mc" / "qa.yaml"
    spec.write_text("name: qa\ndata_dir: data\ntemplate: \"Q: {q}\\nA:\"\nchoices_field: options\n"
                    "label_field: answer\neval_split: test\ndemo_split: train\n")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        c = compose("config", overrides=["model=hf", f"model.source={tiny_dir}", "task=file", f"task.file={spec}",
                                         "method=grad", "n_shot=1", "logger=disabled", f"results_dir={tmp_path / 'r'}"])
    with pytest.raises(ValueError, match="method=grad needs at least 2 demonstrations"):
        run_job(c)
    assert not (tmp_path / "r").exists()


def test_every_method_yaml_names_its_registered_class_and_the_target_stays_out_of_the_key():
    from pathlib import Path

    import yaml

    from ift.experiment.config import METHODS, parse_config
    from ift.experiment.methods import REGISTRY

    conf = Path(__file__).resolve().parents[1] / "conf" / "method"
    assert {p.stem for p in conf.glob("*.yaml")} == set(METHODS) == set(REGISTRY)
    for path in conf.glob("*.yaml"):
        node = yaml.safe_load(path.read_text())
        cls = REGISTRY[node["name"]]
        assert node["_target_"] == f"{cls.__module__}.{cls.__qualname__}"
        base = {"model": {"source": "bundled"}, "task": "demo"}
        by_target, by_name = (parse_config({**base, "method": m}) for m in (node, {"name": node["name"]}))
        assert type(by_target.method) is cls and by_target.hash == by_name.hash
