"""The cross-model page: the same arms, tasks, seeds and protocol for two or more models, side by side.

    python -m analysis.crossmodel --model "SmolLM2-135M-Instruct=docs/results/eta/runs.tar.gz,..." \\
        --model "Gemma-3-270m base=results/gemma" --out docs/results/crossmodel [--max-step 8]

Each model's sources (store directories or `runs.tar.gz` archives) are pooled; `analysis.load` counts a run
recorded twice (same configuration and seed) once. The protocol is analysis.study's (`candidates`, `choose`,
`arm_table`, `interval`, `drop_incomplete`): per task and seed an arm picks its step on the dev rows (honest) or
on the evaluation rows (the paper's), both only among steps ≤ `--max-step`, so runs to T = 15 and to T = 8
compare on the same footing; differences to ICL and between arms are paired by seed. What this module adds:
the arms named across models, one seed set per task shared by every arm (pooled archives of 40 seeds and of 5
would otherwise compare different demonstrations), means over only the tasks every model has, the figure.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import load  # noqa: E402
from analysis.arms import ICL, choose  # noqa: E402
from analysis.core import interval, markdown_table, marked, pm, signed  # noqa: E402
from analysis.crossmodel_runs import (  # noqa: E402
    ARM_TEXT,
    ARMS,
    DEFAULT,
    LONG,
    PAPER,
    RIVALS,
    ZERO,
    Model,
    demo_check,
    frame,
    parse_model,
    prepare,
    reach,
    runs_table,
    seed_notes,
)
from analysis.study_tables import arm_table  # noqa: E402

# ---------------------------------------------------------------- tables

def deltas(cands: pd.DataFrame, max_step: int) -> pd.DataFrame:
    """analysis.study_tables.arm_table over the steps ≤ max_step: per (model, task, n_shot, arm) the honest and the
    paper's Δ vs ICL with their paired intervals."""
    return arm_table(cands[cands["step"] <= max_step])


def shared_tasks(table: pd.DataFrame, models: list[str], arm: str) -> list[tuple]:
    """The (task, n_shot) on which every model has `arm` and ICL, i.e. a Δ to average."""
    have = table[(table["arm"] == arm) & table["dev_delta"].notna()]
    per_model = [set(zip(*[have[have["model"] == m][k] for k in ("task", "n_shot")])) for m in models]
    return sorted(set.intersection(*per_model), key=str) if per_model else []


def main_table(table: pd.DataFrame, models: list[str], arms=ARMS) -> tuple[pd.DataFrame, dict[str, list]]:
    """Rows = task (+ the mean over the tasks every model has, interval over tasks); per model: seeds, ICL
    accuracy, and per arm 'honest Δ / paper Δ' vs ICL. Returns the table and the shared tasks per arm."""
    arms = [a for a in arms if (table["arm"] == a).any()]
    shared = {a: shared_tasks(table, models, a) for a in arms}
    rows = []
    by = table.set_index(["model", "task", "n_shot", "arm"])
    for task, n_shot in sorted(set(zip(table["task"], table["n_shot"])), key=str):
        row = {"task": task, "n_shot": n_shot}
        for m in models:
            icl = (m, task, n_shot, ICL)
            row[f"{m}: seeds"] = int(by.loc[icl, "seeds"]) if icl in by.index else "–"
            row[f"{m}: ICL acc"] = pm(by.loc[icl, "dev_mean"], by.loc[icl, "dev_ci"]) if icl in by.index else "–"
            for a in arms:
                k = (m, task, n_shot, a)
                have = k in by.index and not math.isnan(by.loc[k, "dev_delta"])  # NaN: no ICL to compare with
                row[f"{m}: {a}"] = (f"{marked(by.loc[k, 'dev_delta'], by.loc[k, 'dev_delta_ci'])}"
                                    f" / {signed(by.loc[k, 'eval_delta'], by.loc[k, 'eval_delta_ci'])}"
                                    if have else "–")
        rows.append(row)
    mean = {"task": "mean over shared tasks", "n_shot": ""}
    for m in models:
        mean[f"{m}: seeds"], mean[f"{m}: ICL acc"] = "", ""
        for a in arms:
            pick = by.loc[[(m, t, n, a) for t, n in shared[a]]] if shared[a] else None
            mean[f"{m}: {a}"] = "–" if pick is None else (
                f"{marked(*interval(pick['dev_delta'].tolist())[:2])}"
                f" / {signed(*interval(pick['eval_delta'].tolist())[:2])}")
    rows.append(mean)
    return pd.DataFrame(rows), shared


def versus(cands: pd.DataFrame, max_step: int, arm: str = DEFAULT) -> dict[tuple, tuple[float, float, int]]:
    """(model, task, n_shot, rival) -> `arm`'s honest accuracy minus the rival's (mean, 95% half-width, seeds),
    both chosen on dev among steps ≤ max_step, paired by seed."""
    picks = choose(cands[cands["step"] <= max_step], "dev")
    out = {}
    for (model, task, n_shot), g in picks.groupby(["model", "task", "n_shot"], sort=True):
        mine = g[g["arm"] == arm].set_index("seed")["acc"]
        for rival in RIVALS:
            theirs = g[g["arm"] == rival].set_index("seed")["acc"]
            common = mine.index.intersection(theirs.index)
            if len(common):
                out[(model, task, n_shot, rival)] = interval((mine[common] - theirs[common]).tolist())
    return out


def versus_table(pairs: dict, models: list[str]) -> tuple[pd.DataFrame, dict[str, list]]:
    """Rows = task (+ the mean over the tasks every model has that comparison on), columns = model × rival."""
    rivals = [r for r in RIVALS if any(k[3] == r for k in pairs)]
    shared = {r: sorted(set.intersection(*[{(k[1], k[2]) for k in pairs if k[0] == m and k[3] == r}
                                           for m in models]), key=str) for r in rivals}
    rows = []
    for task, n_shot in sorted({(k[1], k[2]) for k in pairs}, key=str):
        row = {"task": task, "n_shot": n_shot}
        for m in models:
            for r in rivals:
                v = pairs.get((m, task, n_shot, r))
                row[f"{m}: {DEFAULT} − {r}"] = "–" if v is None else f"{marked(*v[:2])} ({v[2]} seed{'s' * (v[2] != 1)})"
        rows.append(row)
    if rows:
        mean = {"task": "mean over shared tasks", "n_shot": ""}
        for m in models:
            for r in rivals:
                d = [pairs[(m, t, n, r)][0] for t, n in shared[r]]
                mean[f"{m}: {DEFAULT} − {r}"] = marked(*interval(d)[:2]) if d else "–"
        rows.append(mean)
    return pd.DataFrame(rows), shared


# ---------------------------------------------------------------- the figure

def curves_figure(cands: pd.DataFrame, models: list[str], max_step: int) -> plt.Figure | None:
    """Mean evaluation accuracy vs step, one panel per task, one colour per model: IFT default (solid) and the
    paper's setting (dashed); ICL (dash-dot) and zero-shot (dotted) as horizontal lines. A curve stops at the
    last step every seed has, so each point averages the same seeds."""
    tasks = sorted(set(zip(cands["task"], cands["n_shot"])), key=str) if not cands.empty else []
    if not tasks:
        return None
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {m: palette[i % len(palette)] for i, m in enumerate(models)}
    cols = min(len(tasks), 3)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.remove()
    for ax, (task, n_shot) in zip(axes.flat, tasks):
        part = cands[(cands["task"] == task) & (cands["n_shot"] == n_shot)]
        longest = 1
        for m in models:
            mine = part[part["model"] == m]
            for arm, style in ((DEFAULT, "-"), (PAPER, "--")):
                g = mine[mine["arm"] == arm]
                if g.empty:
                    continue
                last = int(g.groupby("seed")["step"].max().min())
                curve = g[g["step"] <= last].groupby("step")["acc"].mean()
                ax.plot(curve.index, curve.to_numpy(), style, marker="o", markersize=2.5, linewidth=1.2,
                        color=colour[m], label=f"{m}: {arm}")
                longest = max(longest, last)
            icl = mine[(mine["step"] == 1) & mine["step1_is_icl"]].drop_duplicates("run")
            zero = mine[mine["arm"] == ZERO]
            for rows_, style, name in ((icl, "-.", "ICL"), (zero, ":", ZERO)):
                if not rows_.empty:
                    ax.axhline(rows_.drop_duplicates("seed")["acc"].mean(), color=colour[m], linestyle=style,
                               linewidth=1, label=f"{m}: {name}")
        if longest > max_step:
            ax.axvline(max_step, color="grey", linewidth=0.8)
        seeds = ", ".join(f"{int(part[part['model'] == m]['seed'].nunique())}" for m in models)
        ax.set_title(f"{task}, {n_shot}-shot (seeds per model: {seeds})", fontsize="medium")
        ax.set_xlabel("step T (1 = ICL)")
        ax.set_ylabel("eval accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    legend = {}
    for ax in axes.flat[:len(tasks)]:
        for handle, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, handle)
    owner = {f"{m}: {what}": i for i, m in enumerate(models) for what in (DEFAULT, PAPER, "ICL", ZERO)}
    labels = sorted(legend, key=lambda s: (owner[s], s))
    ncol = len(models)  # a column per model (labels are sorted by model)
    fig.legend([legend[k] for k in labels], labels, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * -(-len(labels) // ncol)) / fig.get_figheight(), 1, 1))
    return fig


def save(fig: plt.Figure, path: Path) -> Path:
    """PNG with fixed metadata (no matplotlib version), so a rebuild is byte-identical."""
    fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the page

def build(models: list[Model], out: Path, title: str = "Across models", max_step: int = 8,
          metric: str = "acc") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [m.label for m in models]
    cands = frame(models, metric)
    md = [f"# {title}\n",
          f"Generated by `python -m analysis.crossmodel` (metric `{metric}`, in %, steps ≤ {max_step}).\n",
          __doc__.split("\n\n", 2)[2].strip() + "\n", "## The arms\n",
          "\n".join(f"- **{a}**: {ARM_TEXT[a]}" + ("" if a == ZERO else
                                                   f" among steps ≤ {max_step} (step 1 = ICL)") for a in ARMS) + "\n",
          "ICL is step 1 of any run with demonstrations (identical across a seed's runs; checked). *Honest*: the "
          "step with the best dev accuracy (ties: fewer tuning tokens, then the earlier step, so a flat curve "
          "reports ICL), its evaluation accuracy reported. *Paper*: the best evaluation accuracy (optimistic). "
          "Over seeds: mean and 95% Student-t interval, Δ paired by seed.\n", "## The runs of each model\n"]
    for m in models:
        prec = sorted({str(r.meta.get("dtype")) for r in m.kept})
        names = sorted({str(r.meta.get("model")) for r in m.kept})
        md += [f"### {m.label}\n",
               f"Sources: {', '.join(f'`{s}`' for s in m.sources)}. Model (meta): {', '.join(names) or '–'}. "
               f"Precision (meta dtype): {', '.join(prec) or '–'}. "
               f"{len(m.kept)} runs used; {len(load.skipped(m.runs))} skipped (listed at the end); {m.outside} "
               f"finished runs belong to no compared arm (other η, modes, β) and are not read; "
               f"{len(m.copies)} shorter copies of a kept run (same setting and seed, smaller T) left out.\n"]
        if m.copies:
            worst = max(max((abs(a["acc"] - b["acc"]) for a, b in zip(s.steps, lg.steps)), default=0.0)
                        for s, lg in m.copies)
            md.append(f"The shorter copies agree with the kept runs on their common steps to within "
                      f"{100 * worst:.1f} points of accuracy.\n")
        notes = seed_notes(m)
        if notes:
            md += ["Seeds: each task uses only the seeds every arm present has, so that all its arms (and ICL) "
                   "average the same demonstrations and rows:\n", "\n".join(notes) + "\n"]
        t = runs_table(m)
        md.append(markdown_table(t) + "\n" if not t.empty else "No usable runs.\n")
    md += ["## The shared protocol\n", " ".join(demo_check(models)) + "\n"]
    if cands.empty:
        md.append("No usable runs.\n")
    else:
        table = deltas(cands, max_step)
        main, shared = main_table(table, labels)
        md += [f"## Against ICL, T ≤ {max_step}\n",
               "Per model and arm, each cell: honest Δ / paper Δ vs ICL (points, mean ± 95% interval over seeds, paired); "
               "▲ / ▼: the honest interval excludes 0. The last row: the mean of the tasks' Δ with a t-interval "
               "over tasks, over only the tasks every model has for that arm:\n",
               "\n".join(f"- {a}: {', '.join(t for t, _ in shared[a]) or 'none'} ({len(shared[a])})"
                         for a in shared) + "\n", markdown_table(main) + "\n"]
        if max_step < LONG:
            md += _long_section(cands, models, labels)
        pairs = versus(cands, max_step)
        if pairs:
            vt, vshared = versus_table(pairs, labels)
            md += ["## IFT default head to head\n",
                   f"{DEFAULT} minus each rival, both chosen on dev among steps ≤ {max_step}, paired by seed (points, "
                   "mean ± 95% interval); ▲ / ▼: IFT better / worse. The last row: mean over the tasks every model "
                   "has that comparison on (" + "; ".join(f"{r}: {', '.join(t for t, _ in vshared[r]) or 'none'}"
                                                          for r in vshared) + "), interval over tasks.\n",
                   markdown_table(vt) + "\n"]
        fig = curves_figure(cands, labels, max_step)
        if fig is not None:
            md += ["## Accuracy against step\n",
                   f"Mean over seeds; grey line: step {max_step}, the last the tables choose among.\n",
                   f"![accuracy vs step, both models]({save(fig, out / 'crossmodel_curves.png').name})\n"]
    md.append("## Runs skipped\n")
    skipped = [{"model": m.label, "run": r.id, "reason": r.skip} for m in models for r in load.skipped(m.runs)]
    md.append(markdown_table(pd.DataFrame(skipped)) + "\n" if skipped else "none\n")
    path = out / "crossmodel.md"
    path.write_text("\n".join(md))
    return path


def _long_section(cands: pd.DataFrame, models: list[Model], labels: list[str]) -> list[str]:
    """The IFT arms again, choosing among steps ≤ LONG, on the tasks where every model's runs reach LONG."""
    far = reach(models)
    keep = {(t, n, a) for (_, t, n, a) in far
            if a in (DEFAULT, PAPER) and all(far.get((m, t, n, a), 0) >= LONG for m in labels)}
    head = [f"## Against ICL, T ≤ {LONG}\n"]
    if not keep:
        return head + [f"No task yet where every model has IFT runs to step {LONG} on every seed used.\n"]
    c = cands[[(t, n, a) in keep for t, n, a in zip(cands["task"], cands["n_shot"], cands["arm"])]]
    main, shared = main_table(deltas(c, LONG), labels, arms=(DEFAULT, PAPER))
    return head + [f"As above, the IFT arms choosing among steps ≤ {LONG}, on the tasks where every model's runs "
                   f"reach step {LONG}. Mean over: " + "; ".join(f"{a}: {', '.join(t for t, _ in shared[a]) or 'none'}"
                                                            for a in shared) + ".\n", markdown_table(main) + "\n"]


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m analysis.crossmodel", description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=SRC[,SRC...]",
                    help="a model's label and its store directories / runs.tar.gz archives (repeat per model)")
    ap.add_argument("--out", required=True, help="output directory for crossmodel.md and its figure")
    ap.add_argument("--title", default="Across models")
    ap.add_argument("--max-step", type=int, default=8, help="choose only among steps ≤ this (default 8)")
    ap.add_argument("--metric", default="acc", choices=["acc", "acc_norm"])
    ap.add_argument("--allow-missing", action="store_true",
                    help="build the page even when runs are unreadable, damaged, failed or incomplete")
    args = ap.parse_args(argv)
    specs = []
    for spec in args.model:
        try:
            specs.append(parse_model(spec))
        except ValueError as exc:
            ap.error(str(exc))
    names = [label for label, _ in specs]
    if len(set(names)) != len(names):
        ap.error(f"--model: each model needs its own label, got {names}")
    if len(specs) < 2:
        ap.error("--model: a cross-model page needs at least two models (give --model twice)")
    if args.max_step < 1:
        ap.error(f"--max-step must be >= 1, got {args.max_step}")
    try:
        models = [prepare(label, sources) for label, sources in specs]
    except (OSError, ValueError) as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    for m in models:
        if not m.runs:
            ap.error(f"--model {m.label!r}: no runs (meta.json) found in {', '.join(m.sources)}")
        refused = load.check(m.runs, args.allow_missing)
        if refused:
            ap.exit(1, f"{ap.prog}: error: --model {m.label!r}: {refused}\n")
    path = build(models, Path(args.out), args.title, args.max_step, args.metric)
    print(path)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
