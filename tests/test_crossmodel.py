"""analysis.crossmodel: two models' honest and paper Δ side by side, means over only the shared tasks, duplicates
counted once, --max-step respected, a byte-identical rebuild, clear errors for a malformed --model."""
import json
import math
import shutil
from pathlib import Path

import pytest
from scipy import stats

from analysis import archive
from analysis import crossmodel as cm
from analysis import crossmodel_runs as cmr

T975 = {1: stats.t.ppf(0.975, 1)}  # two seeds or two tasks: half-width = t(1) * sd / sqrt(2)
DEFAULT = {"method": "ift", "position_mode": "aligned", "eta": 0.1, "beta": 0.9}
PAPER = {"method": "ift", "position_mode": "continue", "eta": 0.01, "beta": 0.9}
ZERO = {"method": "zero_shot", "position_mode": None, "eta": None, "beta": None}
GRAD = {"method": "grad", "position_mode": None, "eta": None, "beta": None, "lr": 0.001}


def job(root: Path, model: str, task: str, seed: int, arm: dict, acc, dev, n_shot=1, dtype="fp32", **extra):
    """One finished job directory of a results store."""
    name = f"{arm['method']}-{arm['position_mode']}-{arm['eta']}-T{len(acc)}-{seed}"
    d = root / task / model / name
    d.mkdir(parents=True)
    meta = {"mode": "tune", "model": model, "task": task, "seed": seed, "T": len(acc), "n_shot": n_shot,
            "status": "finished", "dtype": dtype, "n_eval": 100, "n_dev": 30, "patience": None,
            "finished": "2026-12-04T05:00:00+0000",
            "demonstrations": {"indices": [seed, seed + 10], "split": "train"}, **arm, **extra}
    (d / "meta.json").write_text(json.dumps(meta))
    (d / "steps.jsonl").write_text("".join(json.dumps({"step": i + 1, "acc": a, "dev_acc": v, "tune_tokens": 10 * i})
                                           + "\n" for i, (a, v) in enumerate(zip(acc, dev))))
    (d / "summary.json").write_text(json.dumps({"status": "finished"}))
    return d


@pytest.fixture
def stores(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    flat = [0.5] * 10
    # model A, sst2: IFT default to T = 10; with steps ≤ 8 dev picks step 2 (seed 0) and step 1 (seed 1)
    job(a, "ma", "sst2", 0, DEFAULT, [.5, .6, .7, .55, .5, .5, .5, .5, .9, .5], [.5, .6, .5, .5, .5, .5, .5, .5, .9, .5])
    job(a, "ma", "sst2", 1, DEFAULT, [.4, .4, .6, .4, .4, .4, .4, .4, .4, .4], flat)
    job(a, "ma", "sst2", 0, DEFAULT, [.5, .6], [.5, .6])  # a shorter copy (T = 2) of seed 0: counted once
    job(a, "ma", "sst2", 0, PAPER, [.5, .55], [.5, .6])
    job(a, "ma", "sst2", 1, PAPER, [.4, .4], [.5, .5])
    for seed, acc in ((0, .45), (1, .50), (2, .70)):  # seed 2: no other arm has it, so it is left out
        job(a, "ma", "sst2", seed, ZERO, [acc], [.5])
    job(a, "ma", "sst2", 0, GRAD, [.5, .65], [.5, .7])
    job(a, "ma", "sst2", 1, GRAD, [.4, .5], [.5, .6])
    job(a, "ma", "mr", 0, DEFAULT, [.6, .7], [.5, .6])
    job(a, "ma", "mr", 1, DEFAULT, [.7, .74], [.5, .6])
    job(a, "ma", "copa", 0, DEFAULT, [.3, .5], [.1, .2], n_shot=4)  # only model A has copa
    job(a, "ma", "copa", 1, DEFAULT, [.3, .5], [.1, .2], n_shot=4)
    # model B
    dup = job(b, "mb", "sst2", 0, DEFAULT, [.6, .8], [.5, .6])
    job(b, "mb", "sst2", 1, DEFAULT, [.6, .7], [.5, .6])
    job(b, "mb", "sst2", 0, ZERO, [.6], [.5])
    job(b, "mb", "sst2", 1, ZERO, [.5], [.5])
    job(b, "mb", "sst2", 0, GRAD, [.6, .6], [.5, .5])
    job(b, "mb", "sst2", 1, GRAD, [.6, .9], [.5, .6])
    job(b, "mb", "mr", 0, DEFAULT, [.5, .5], [.5, .5])
    job(b, "mb", "mr", 1, DEFAULT, [.5, .6], [.5, .4])
    copy = tmp_path / "b_copy" / "sst2" / "mb" / dup.name  # the same run in a second source of model B,
    shutil.copytree(dup, copy)
    archive.pack(tmp_path / "b_copy", tmp_path / "b_copy.tar.gz")  # an archive of it
    return [f"A={a}", f"B={b}, {tmp_path / 'b_copy.tar.gz'}"]


def models(specs):
    return [cmr.prepare(*cmr.parse_model(s)) for s in specs]


def half(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T975[n - 1] * sd / math.sqrt(n)


def test_honest_and_paper_deltas_per_model_choose_among_steps_up_to_max_step(stores):
    ms = models(stores)
    table = cm.deltas(cmr.frame(ms), 8).set_index(["model", "task", "arm"])
    r = table.loc[("A", "sst2", cmr.DEFAULT)]
    assert (r["dev_delta"], r["eval_delta"]) == pytest.approx((5.0, 20.0))  # seeds: +10, 0 / +20, +20
    assert r["dev_delta_ci"] == pytest.approx(half([10, 0])) and r["seeds"] == 2
    assert table.loc[("A", "sst2", cmr.ZERO), "dev_delta"] == pytest.approx(2.5)  # -5, +10 (seed 2 left out)
    assert table.loc[("A", "sst2", cmr.PAPER), "dev_delta"] == pytest.approx(2.5)
    r = table.loc[("B", "mr", cmr.DEFAULT)]
    assert (r["dev_delta"], r["eval_delta"]) == pytest.approx((0.0, 5.0))  # dev keeps ICL; eval peeks at step 2
    longer = cm.deltas(cmr.frame(ms), 10).set_index(["model", "task", "arm"]).loc[("A", "sst2", cmr.DEFAULT)]
    assert (longer["dev_delta"], longer["eval_delta"]) == pytest.approx((20.0, 30.0))  # step 9 is now allowed


def test_means_are_over_the_tasks_every_model_has(stores):
    ms = models(stores)
    table = cm.deltas(cmr.frame(ms), 8)
    main, shared = cm.main_table(table, ["A", "B"])
    assert shared[cmr.DEFAULT] == [("mr", 1), ("sst2", 1)]  # not copa: B lacks it
    assert shared[cmr.ZERO] == [("sst2", 1)] and shared[cmr.PAPER] == []
    mean = main.set_index("task").loc["mean over shared tasks"]
    # A: sst2 +5, mr +7 (copa's +20 left out); B: sst2 +15, mr 0
    assert mean[f"A: {cmr.DEFAULT}"] == f"+6.0 ± {half([5, 7]):.1f} / +13.5 ± {half([20, 7]):.1f}"
    assert mean[f"B: {cmr.DEFAULT}"].startswith(f"+7.5 ± {half([15, 0]):.1f} / ")
    assert mean[f"A: {cmr.PAPER}"] == "–"
    row = main.set_index("task").loc["copa"]
    assert row[f"B: {cmr.DEFAULT}"] == "–" and row[f"A: {cmr.DEFAULT}"] == "+20.0 ± 0.0 ▲ / +20.0 ± 0.0"


def test_duplicates_and_shorter_copies_are_counted_once_and_seeds_are_shared(stores):
    a, b = models(stores)
    runs = cmr.runs_table(b).set_index(["task", "arm"])
    assert runs.loc[("sst2", cmr.DEFAULT), "runs"] == 2  # the copy in the second source is not a third seed
    assert sum("duplicate of" in (r.skip or "") for r in b.runs) == 1  # the store's and the archive's copy
    assert len(a.copies) == 1 and a.copies[0][0].meta["T"] == 2  # the T = 2 copy gives way to T = 10
    assert a.seeds[("sst2", 1)] == [0, 1] and a.left[("sst2", 1)] == {cmr.ZERO: [2]}
    assert cmr.runs_table(a).set_index(["task", "arm"]).loc[("sst2", cmr.DEFAULT), "T"] == "10"


def test_head_to_head_is_paired_by_seed(stores):
    pairs = cm.versus(cmr.frame(models(stores)), 8)
    assert pairs[("A", "sst2", 1, cmr.ZERO)][0] == pytest.approx(2.5)  # 60-45, 40-50
    assert pairs[("B", "sst2", 1, cmr.ZERO)][:2] == pytest.approx((20.0, 0.0))
    assert pairs[("A", "sst2", 1, cmr.GRAD)][0] == pytest.approx(-7.5)  # 60-65, 40-50
    assert pairs[("B", "sst2", 1, cmr.GRAD)][0] == pytest.approx(0.0)  # 80-60, 70-90
    assert ("A", "mr", 1, cmr.GRAD) not in pairs  # no gradient tuning on mr
    table, shared = cm.versus_table(pairs, ["A", "B"])
    assert shared[cmr.ZERO] == [("sst2", 1)] and shared[cmr.GRAD] == [("sst2", 1)]
    assert table.set_index("task").loc["sst2", f"B: {cmr.DEFAULT} − {cmr.ZERO}"] == "+20.0 ± 0.0 ▲ (2 seeds)"
    assert list(table["task"]) == ["sst2", "mean over shared tasks"]  # mr: no rival to compare with


def test_the_t15_table_holds_the_tasks_where_every_model_reaches_step_15(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    peak = [.5] * 11 + [.9] + [.5] * 3  # step 12 is best on dev and on eval
    for seed in (0, 1):
        job(x, "mx", "sst2", seed, DEFAULT, peak, [.5] * 11 + [.8] + [.5] * 3)
        job(y, "my", "sst2", seed, DEFAULT, [.5] * 15, [.5] * 15)
        job(x, "mx", "mr", seed, DEFAULT, [.5] * 15, [.5] * 15)
        job(y, "my", "mr", seed, DEFAULT, [.5] * 8, [.5] * 8)  # mr: Y stops at 8, so mr is not in the T ≤ 15 table
    page = cm.build(models([f"X={x}", f"Y={y}"]), tmp_path / "out").read_text()
    short, long_ = page.split("## Against ICL, T ≤ 8")[1].split("## Against ICL, T ≤ 15")
    assert "| sst2 | 1 | 2 | 50.0 ± 0.0 | +0.0 ± 0.0 / +0.0 ± 0.0 |" in short  # step 12 is out of reach
    assert "| sst2 | 1 | 2 | 50.0 ± 0.0 | +40.0 ± 0.0 ▲ / +40.0 ± 0.0 |" in long_
    assert "| mr |" not in long_.split("##")[0] and "IFT default: sst2" in long_


def test_the_page_says_when_models_read_other_demonstrations_or_rows(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    for seed in (0, 1):
        job(x, "mx", "sst2", seed, DEFAULT, [.5, .6], [.5, .6])
        job(y, "my", "sst2", seed, DEFAULT, [.5, .6], [.5, .6], n_eval=50,
            demonstrations={"indices": [seed, 99], "split": "train"})
    said = " ".join(cmr.demo_check(models([f"X={x}", f"Y={y}"])))
    assert "rows differ between models on sst2 (X: ['(100, 30)']; Y: ['(50, 30)'])" in said
    assert "differ between models on 2 of 2 shared (task, seed) pairs: sst2 seed 0, sst2 seed 1" in said


def test_the_figure_has_a_panel_per_task_and_a_colour_per_model(stores):
    fig = cm.curves_figure(cmr.frame(models(stores)), ["A", "B"], 8)
    axes = fig.get_axes()
    assert [ax.get_title().split(",")[0] for ax in axes] == ["copa", "mr", "sst2"]
    lines = {line.get_label(): line for line in axes[2].get_lines()}
    assert {lines[k].get_color() for k in ("A: IFT default", "A: ICL", "A: zero-shot", "A: paper's setting")} == \
        {lines["A: ICL"].get_color()} != {lines["B: ICL"].get_color()}
    curve = list(lines["A: IFT default"].get_ydata())  # mean of seeds 0 and 1, all 10 steps (the tables stop at 8)
    assert len(curve) == 10 and curve[:3] == pytest.approx([45.0, 50.0, 65.0]) and curve[8] == pytest.approx(65.0)
    assert lines["A: ICL"].get_ydata()[0] == pytest.approx(45.0)


def test_cli_page_is_byte_identical_on_a_rebuild(stores, tmp_path, capsys):
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in outs:
        args = [a for s in stores for a in ("--model", s)] + ["--out", str(out), "--title", "A and B"]
        assert cm.main(args) == out / "crossmodel.md"
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["crossmodel.md", "crossmodel_curves.png"]
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    page = (outs[0] / "crossmodel.md").read_text()
    assert "- IFT default: mr, sst2 (2)" in page
    assert "sst2 (1-shot): seeds 0-1 used; left out: zero-shot 2" in page
    assert "same numbers of evaluation and dev rows on all 2 tasks" in page
    assert "same demonstrations (split and row indices, from meta) on all 4 (task, seed) pairs" in page and "No task yet where every model has IFT runs to step 15" in page


@pytest.mark.parametrize("spec, says", [("nolabel", "expected LABEL=SRC"), ("=x", "expected LABEL=SRC"),
                                        ("A=", "expected LABEL=SRC"), ("A=/no/such/dir", "do not exist")])
def test_a_malformed_model_is_refused_naming_the_argument(spec, says, stores, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cm.main(["--model", spec, "--model", stores[1], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert f"--model {spec!r}" in err and says in err


def test_one_model_or_a_repeated_label_is_refused(stores, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cm.main(["--model", stores[0], "--out", str(tmp_path / "o")])
    assert "at least two models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cm.main(["--model", stores[0], "--model", stores[0], "--out", str(tmp_path / "o")])
    assert "its own label" in capsys.readouterr().err
