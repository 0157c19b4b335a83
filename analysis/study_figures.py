"""The studies page's figures: accuracy against step per setting, the honest gains, the pseudo-gradient's cosine
to the true gradient (with its table)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import load  # noqa: E402
from analysis.arms import ICL_ROLE, POOL, STEP, SUBJECT, setting_arms  # noqa: E402


def curves_figure(cands: pd.DataFrame) -> plt.Figure | None:
    """Evaluation accuracy vs step per IFT setting (mean over seeds), one panel per task, ICL dashed."""
    ift = setting_arms(cands)
    if ift.empty:
        return None
    tasks = sorted(ift["task"].unique())
    # one colour per setting on every panel (tasks differ in which settings they ran)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {arm: palette[i % len(palette)] for i, arm in enumerate(sorted(ift["arm"].unique()))}
    cols = min(len(tasks), 3)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.remove()
    for ax, task in zip(axes.flat, tasks):
        part = ift[ift["task"] == task]
        # only the seeds every setting has, so that the lines (and ICL) average the same demonstrations
        common = set.intersection(*(set(g["seed"]) for _, g in part.groupby("arm")))
        part = part[part["seed"].isin(common)]
        for arm, g in sorted(part.groupby("arm")):
            curve = g.groupby("step")["acc"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=2.5, linewidth=1.2, color=colour[arm],
                    label=g["arm_spec"].iloc[0].detail)
        icl = part[part["step"] == 1]["acc"].mean()
        ax.axhline(icl, color="black", linestyle="--", linewidth=1, label="ICL")
        ax.set_title(f"{task} ({len(common)} seeds)")
        ax.set_xlabel("step T (1 = ICL)")
        ax.set_ylabel("eval accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    legend = {}  # every setting once, whichever panel drew it
    for ax in axes.flat[:len(tasks)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels = list(legend)
    fig.legend(list(legend.values()), labels, loc="lower center", ncol=min(len(labels), 4), fontsize="small",
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 5), 1, 1))
    return fig


def delta_figure(table: pd.DataFrame) -> plt.Figure | None:
    """Honest Δ vs ICL with its 95% interval, per task and arm (arms: the baselines and the overall IFT)."""
    keep = table[(table["role"] != ICL_ROLE) & ~((table["role"] == SUBJECT) & table["choice"].isin([STEP, POOL]))]
    if keep.empty:
        return None
    arms = list(dict.fromkeys(keep.sort_values(["rank", "arm"], kind="mergesort")["arm"]))
    tasks = sorted(keep["task"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * (len(keep) + 0.6 * len(tasks)) + 1.2))  # one row per task and arm
    y, ticks, labels = 0, [], []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for task in tasks:
        for i, arm in enumerate(arms):
            r = keep[(keep["task"] == task) & (keep["arm"] == arm)]
            if r.empty:
                continue
            d, h = float(r["dev_delta"].iloc[0]), float(r["dev_delta_ci"].iloc[0])
            ax.errorbar(d, y, xerr=0 if math.isnan(h) else h, fmt="o", color=colors[i % len(colors)], capsize=3)
            ticks.append(y)
            labels.append(f"{task}: {arm}")
            y -= 1
        y -= 0.6
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.set_xlabel("accuracy − ICL (points), dev-chosen, mean ± 95% CI over seeds")
    fig.tight_layout()
    return fig


def cosine_frame(runs: list[load.Run]) -> pd.DataFrame:
    """Per (task, seed, position mode, K/V, layer): cosine between IFT's G and the true descent direction."""
    rows = []
    for run in runs:
        cos = run.meta.get("pseudo_grad_cosine") or {}
        for mode, kv in cos.items():
            for which, values in kv.items():
                for layer, c in enumerate(values):
                    if c is None:  # a zero vector: no direction to compare
                        continue
                    rows.append({"task": run.meta.get("task"), "seed": run.meta.get("seed"), "mode": mode,
                                 "which": which, "layer": layer, "cos": float(c)})
    return pd.DataFrame(rows)


def cosine_figure(frame: pd.DataFrame) -> plt.Figure | None:
    if frame.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, which in zip(axes, ("k", "v")):
        part = frame[frame["which"] == which]
        for mode, g in part.groupby("mode"):
            m = g.groupby("layer")["cos"].agg(["mean", "min", "max"])
            (line,) = ax.plot(m.index + 1, m["mean"], marker="o", markersize=3, label=mode)
            ax.fill_between(m.index + 1, m["min"], m["max"], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"cos(G_{which.upper()}, −∇ leave-one-out loss)")
        ax.set_xlabel("layer")
    axes[0].set_ylabel("cosine (mean; band: min-max over tasks, seeds)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90, bbox_inches="tight")  # long tick labels would otherwise push labels off the edge
    plt.close(fig)
    return path


def cosine_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Signed means say whether G leans towards −∇ on average; the |cos| columns say how far single runs and
    layers stray from 0 (a mean of ≈ 0 is no consistent alignment, not orthogonality run by run)."""
    rows = []
    for (mode, which), g in frame.groupby(["mode", "which"]):
        per_run = g.groupby(["task", "seed"])["cos"].mean()
        rows.append({"position mode": mode, "K/V": which.upper(), "mean cosine over layers": f"{per_run.mean():.3f}",
                     "min layer mean": f"{g.groupby('layer')['cos'].mean().min():.3f}",
                     "max layer mean": f"{g.groupby('layer')['cos'].mean().max():.3f}",
                     "mean |cos| (run, layer)": f"{g['cos'].abs().mean():.3f}",
                     "largest |cos| (run, layer)": f"{g['cos'].abs().max():.3f}",
                     "runs": len(per_run)})
    return pd.DataFrame(rows)
