"""Figures 3-5: the matplotlib objects hold the expected panels, curves, heatmaps and titles."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import BarContainer
from test_analysis import SST2, SWEEP, L, norms, store_a, write_job  # noqa: F401 (store_a is a fixture)

from analysis import figures, load, report, tables


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_accuracy_curves_panels_and_lines(store_a):  # noqa: F811
    runs = load.used(load.load([store_a]))
    fig = figures.accuracy_curves(tables.steps_frame(runs), ["eta"])
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["m1 · copa", "m1 · sst2"]
    copa, sst2 = axes
    assert len(copa.get_lines()) == 1 and len(sst2.get_lines()) == 1  # one eta -> one line per panel
    x, y = sst2.get_lines()[0].get_data()
    assert list(x) == [1, 2, 3, 4]
    means = [np.mean([SST2[s][0][t] for s in SST2]) * 100 for t in range(4)]
    assert y == pytest.approx(means)  # mean over the three seeds; the diverged/duplicate runs are not in it
    assert sst2.get_lines()[0].get_label() == "η=0.01"
    # the 95% interval band exists for sst2 (three seeds) but not for copa (one seed)
    assert any(isinstance(c, PolyCollection) for c in sst2.collections)
    assert not any(isinstance(c, PolyCollection) for c in copa.collections)


def test_accuracy_curves_one_line_per_eta(tmp_path):
    for i, ((seed, eta), (acc, dev)) in enumerate(SWEEP.items()):
        write_job(tmp_path / str(i), acc=acc, dev=dev, seed=seed, eta=eta)
    runs = load.used(load.load([tmp_path]))
    (ax,) = figures.accuracy_curves(tables.steps_frame(runs), ["eta"]).get_axes()
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert set(lines) == {"η=0.01", "η=0.1"}
    assert lines["η=0.1"] == pytest.approx([51, 70, 60.5, 57])


def test_grad_norm_heatmaps(tmp_path):
    etas = (0.001, 0.1, 0.01)
    for i, eta in enumerate(etas):
        for seed in (0, 1, 2):
            write_job(tmp_path / f"{i}{seed}", acc=[.5, .6 + eta, .55, .5, .5], seed=seed, eta=eta)
    runs = load.used(load.load([tmp_path]))
    by_eta = {}
    for r in runs:
        by_eta.setdefault(r.meta["eta"], []).append(r)
    acc = {eta: (60 + eta * 100, [2, 2, 2]) for eta in etas}
    fig = figures.grad_norm_heatmaps(by_eta, acc, title="m1 · sst2")
    panels = [ax for ax in fig.get_axes() if ax.images]
    assert len(panels) == 3 and len(fig.get_axes()) == 4  # three heatmaps and one colour bar
    assert [ax.get_title() for ax in panels] == ["η = 0.1, β = 0.9\naccuracy 70.00 (step 2, 2, 2)",
                                                 "η = 0.01, β = 0.9\naccuracy 61.00 (step 2, 2, 2)",
                                                 "η = 0.001, β = 0.9\naccuracy 60.10 (step 2, 2, 2)"]
    img = panels[0].images[0].get_array()
    assert img.shape == (5, L)  # steps x layers
    # mean over seeds 0..2 of (t-1)(layer+1)(1+seed) = 2 (t-1)(layer+1)
    expected = np.array([[2 * (t - 1) * (layer + 1) for layer in range(L)] for t in range(1, 6)])
    assert np.asarray(img) == pytest.approx(expected)
    assert all(ax.images[0].get_clim() == (0.0, expected.max()) for ax in panels)  # one shared scale
    assert fig._suptitle.get_text() == "m1 · sst2"


def test_heatmap_of_value_norms(tmp_path):
    write_job(tmp_path / "a", acc=[.5, .6])
    runs = load.used(load.load([tmp_path]))
    fig = figures.grad_norm_heatmaps({0.01: runs}, {0.01: (60.0, [2])}, which="v")
    img = fig.get_axes()[0].images[0].get_array()
    assert np.asarray(img) == pytest.approx(np.array([[2 * x for x in norms(t, 0, 0.01)] for t in (1, 2)]))


EFF_CPU = [  # (method, batch size, queries/s, peak MB)
    ("icl", 1, 10.0, 50.0), ("tuned", 1, 20.0, 30.0), ("icl", 4, 15.0, 90.0), ("tuned", 4, 40.0, 40.0)]


def eff_row(method, bs, qps, mem, device="cpu", max_batch=None):
    return {"method": method, "device": device, "batch_size": bs, "queries_per_s": qps, "tokens_per_query": 10.0,
            "peak_mem_mb": mem, "max_batch": max_batch}


def test_efficiency_figure_cpu(tmp_path):
    write_job(tmp_path / "e", acc=[.5], mode="efficiency", task="sst5", efficiency=[eff_row(*r) for r in EFF_CPU])
    runs = load.used(load.load([tmp_path]))
    fig = figures.efficiency_figure(figures.efficiency_frame(runs))
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["throughput (queries/s)", "peak memory (MB)"]  # no max batch on CPU
    for ax, col in zip(axes, (2, 3)):
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert [b.get_label() for b in bars] == ["ICL", "tuned (ours)"]
        heights = [[rect.get_height() for rect in b] for b in bars]
        assert heights == [[r[col] for r in EFF_CPU if r[0] == m] for m in ("icl", "tuned")]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["m1\nsst5\nbs=1", "m1\nsst5\nbs=4"]
    assert [t.get_text() for t in axes[0].texts] == ["+100%", "+167%"]


def test_efficiency_figure_gpu_max_batch(tmp_path):
    rows = [eff_row("icl", 96, 300.0, 70000.0, "cuda", 96), eff_row("tuned", 160, 900.0, 60000.0, "cuda", 160)]
    write_job(tmp_path / "a", acc=[.5], mode="efficiency", model="opt-125m", task="sst5", efficiency=rows)
    rows2 = [eff_row("icl", 10, 30.0, 70000.0, "cuda", 10), eff_row("tuned", 25, 80.0, 75000.0, "cuda", 25)]
    write_job(tmp_path / "b", acc=[.5], mode="efficiency", model="opt-13b", task="sst5", efficiency=rows2)
    runs = load.used(load.load([tmp_path]))
    fig = figures.efficiency_figure(figures.efficiency_frame(runs))
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["max batch size", "throughput (queries/s)", "peak memory (MB)"]
    icl, tuned = [c for c in axes[0].containers if isinstance(c, BarContainer)]
    assert [r.get_height() for r in icl] == [96, 10] and [r.get_height() for r in tuned] == [160, 25]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["opt-125m\nsst5", "opt-13b\nsst5"]


def test_report_includes_efficiency_and_momentum(tmp_path):
    store = tmp_path / "store"
    write_job(store / "e", acc=[.5], mode="efficiency", task="sst5", efficiency=[eff_row(*r) for r in EFF_CPU])
    for seed, (acc, dev) in SST2.items():
        write_job(store / f"m{seed}", acc=acc, dev=dev, seed=seed)
        write_job(store / f"n{seed}", acc=acc[::-1], dev=dev, seed=seed, beta=0.0)
    path = report.build(load.load([store]), tmp_path / "out", sources=[store])
    text = path.read_text()
    assert "## Table 3: momentum vs no momentum (β = 0)" in text
    assert "## Figure 3: efficiency" in text and (tmp_path / "out" / "fig3_efficiency.png").exists()
    assert "| m1 | sst5 | tuned | cpu | 4 | 40.0 | 10.0 | 40.0 | – |" in text
    fig5 = sorted(p.name for p in (tmp_path / "out").glob("fig5_*.png"))
    assert fig5 == ["fig5_grad_norms_m1_sst2_beta0.9_continue_1shot_T4.png",
                    "fig5_grad_norms_m1_sst2_beta0_continue_1shot_T4.png"]
