"""The paper's Figures 3-5 with matplotlib (Agg). Each function returns its Figure, so tests can inspect
the axes, lines, images and titles; `save` writes it as PNG.

- Figure 4 (`accuracy_curves`): one panel per (model, task); one line per configuration (η, and any
  other varying key), the mean over seeds at each step, with its 95% t-interval as a band (analysis/core.py).
- Figure 5 (`grad_norm_heatmaps`): for one (model, task, configuration), one heatmap per η of the
  per-layer pseudo-gradient norm ‖G_K‖ (rows = steps 1..T from the bottom, columns = layers 1..L, as in
  the paper), mean over seeds, one colour scale for all panels; the title gives η, β and the mean
  best-on-eval accuracy with its step.
- Figure 3 (`efficiency_figure`): grouped bars ICL vs tuned per (model, task[, batch size]): max batch
  (GPU rows only), throughput, peak memory; the tuned bar is labelled with its change against ICL.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.core import half_width  # noqa: E402
from analysis.load import Run  # noqa: E402


def label(config: dict) -> str:
    """'η=0.01, β=0.9' from the keys that tell a panel's lines apart."""
    names = {"eta": "η", "beta": "β", "position_mode": "pos", "n_shot": "shots", "T": "T"}
    return ", ".join(f"{names.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{names.get(k, k)}={v}"
                     for k, v in config.items())


def accuracy_curves(steps: pd.DataFrame, line_keys: list[str]) -> plt.Figure:
    """Figure 4 from `tables.steps_frame` output (acc in %), lines told apart by `line_keys`."""
    panels = sorted(steps.groupby(["model", "task"]).groups)
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.remove()
    for ax, (model, task) in zip(axes.flat, panels):
        panel = steps[(steps["model"] == model) & (steps["task"] == task)]
        keys = line_keys or ["eta"]
        for cfg, g in panel.groupby(keys, sort=True):
            cfg = cfg if isinstance(cfg, tuple) else (cfg,)
            by_step = g.groupby("step")["acc"]
            mean = by_step.mean().sort_index()
            half = by_step.agg(half_width).reindex(mean.index).fillna(0.0).to_numpy()  # 0 with one seed
            x, y = mean.index.to_numpy(), mean.to_numpy()
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=label(dict(zip(keys, cfg))))
            if (half > 0).any():
                ax.fill_between(x, y - half, y + half, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(f"{model} · {task}")
        ax.set_xlabel("optimisation step T (1 = ICL)")
        ax.set_ylabel("accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def norm_matrix(runs: list[Run], which: str = "k") -> np.ndarray:
    """Mean over runs (seeds) of the per-step, per-layer norms: shape (steps, layers)."""
    mats = [np.array([s[f"grad_norm_{which}"] for s in r.steps], dtype=float) for r in runs]
    steps = min(m.shape[0] for m in mats)
    return np.mean([m[:steps] for m in mats], axis=0)


def grad_norm_heatmaps(by_eta: dict[float, list[Run]], accuracy: dict[float, tuple[float, list[int]]],
                       title: str = "", which: str = "k") -> plt.Figure:
    """Figure 5: one heatmap per η (largest first, as in the paper) with a shared colour scale.

    by_eta: η -> the runs (seeds) of that η; accuracy: η -> (mean best-on-eval acc, peak step per seed).
    """
    etas = sorted(by_eta, reverse=True)
    mats = {eta: norm_matrix(by_eta[eta], which) for eta in etas}
    vmax = max(float(m.max()) for m in mats.values()) or 1.0
    fig, axes = plt.subplots(1, len(etas), figsize=(4.2 * len(etas), 4.4), squeeze=False, layout="constrained")
    for ax, eta in zip(axes[0], etas):
        m = mats[eta]
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax,
                       extent=(0.5, m.shape[1] + 0.5, 0.5, m.shape[0] + 0.5))
        beta = by_eta[eta][0].meta.get("beta")
        acc, peak = accuracy[eta]
        ax.set_title(f"η = {eta:g}, β = {beta:g}\naccuracy {acc:.2f} (step {', '.join(map(str, peak))})")
        ax.set_xlabel("layer")
        ax.set_ylabel("step T")
        # every layer (step) up to 10 (16), else every k-th one so labels never overlap (SmolLM2: 30 layers)
        ax.set_xticks(range(1, m.shape[1] + 1, max(1, -(-m.shape[1] // 10))))
        ax.set_yticks(range(1, m.shape[0] + 1, max(1, -(-m.shape[0] // 16))))
    fig.colorbar(im, ax=list(axes[0]), label=f"‖G_{which.upper()}‖ (Frobenius)")
    if title:
        fig.suptitle(title)
    return fig


def efficiency_frame(runs: list[Run]) -> pd.DataFrame:
    """All efficiency rows with their run's model and task."""
    rows = [{"run": r.id, "model": r.meta.get("model"), "task": r.meta.get("task"), **row}
            for r in runs for row in r.efficiency]
    frame = pd.DataFrame(rows, columns=["run", "model", "task", "method", "device", "batch_size",
                                        "queries_per_s", "tokens_per_query", "peak_mem_mb", "max_batch", "capped"])
    frame["capped"] = frame["capped"].fillna(False).astype(bool)  # True: the search hit its limit (a lower bound)
    return frame


def max_batch_label(value, capped: bool) -> str:
    """A searched max batch as reports print it: "≥ N" when the search stopped at its limit, "–" when none."""
    return "–" if pd.isna(value) else f"≥ {int(value)}" if capped else str(int(value))


def efficiency_figure(eff: pd.DataFrame) -> plt.Figure:
    """Figure 3: ICL vs tuned bars per (model, task[, device, batch size]), one panel per measure."""
    eff = eff.copy()
    search = eff["max_batch"].notna()
    # GPU rows are measured at their own max batch, so the category is (model, task, device) there;
    # fixed-batch (CPU) rows are compared at equal batch size
    eff["batch"] = np.where(search, "max", eff["batch_size"].astype(str))
    many_devices = eff["device"].nunique() > 1
    eff["category"] = [f"{m}\n{t}" + (f"\n{d}" if many_devices else "") + ("" if b == "max" else f"\nbs={b}")
                       for m, t, d, b in zip(eff["model"], eff["task"], eff["device"], eff["batch"])]
    measures = [("queries_per_s", "throughput (queries/s)"), ("peak_mem_mb", "peak memory (MB)")]
    if search.any():
        measures.insert(0, ("max_batch", "max batch size"))
    means = eff.groupby(["category", "method"], sort=False)[[m for m, _ in measures]].mean()
    cats = list(dict.fromkeys(eff["category"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(max(4.5, 1.3 * len(cats) + 2) * len(measures), 4),
                             squeeze=False)
    x = np.arange(len(cats))
    width = 0.38
    for ax, (col, name) in zip(axes[0], measures):
        vals = {}
        for i, method in enumerate(("icl", "tuned")):
            vals[method] = [means[col].get((c, method), np.nan) for c in cats]
            ax.bar(x + (i - 0.5) * width, vals[method], width, label="ICL" if method == "icl" else "tuned (ours)")
        if col == "max_batch":  # a capped search is a lower bound: its bar says "≥ N", and no ratio is drawn
            capped = eff.groupby(["category", "method"], sort=False)["capped"].any()
            for i, method in enumerate(("icl", "tuned")):
                for xi, c, v in zip(x, cats, vals[method]):
                    if capped.get((c, method), False):
                        ax.annotate(max_batch_label(v, True), (xi + (i - 0.5) * width, v), ha="center",
                                    va="bottom", fontsize="x-small")
        for xi, c, a, b in zip(x, cats, vals["icl"], vals["tuned"]):
            if col == "max_batch" and (capped.get((c, "icl"), False) or capped.get((c, "tuned"), False)):
                continue
            if a and np.isfinite(a) and np.isfinite(b):
                ax.annotate(f"{(b - a) / a * 100:+.0f}%", (xi + width / 2, b), ha="center", va="bottom",
                            fontsize="x-small")
        ax.set_xticks(x, cats, fontsize="small")
        ax.set_title(name)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
