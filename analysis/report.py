"""One command from recorded runs to the paper's artefacts: Tables 1-3 in a Markdown report, Figures 3-5 as PNG.

    python -m analysis.report results/ [more dirs] [wandb:<entity>/<project>] [--out reports] [--metric acc_norm]

Every source is a results directory (a job directory or any tree of them) or a wandb project; the report
lists the runs it used and the runs it skipped, with why. Protocols and statistics: see analysis/tables.py
and docs/analysis.md.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from analysis import cli, figures, load, tables
from analysis.core import markdown_table
from analysis.methods import method_info

PROTOCOLS = """\
ICL is the eval accuracy at step 1. *Best on eval* (the paper's protocol) is the best eval accuracy over
steps 1..T; *dev-chosen* is the eval accuracy at the step with the best dev accuracy (earliest on ties).
Where runs differ only in η, each protocol also picks η per seed (by eval accuracy, or by dev accuracy).
Cells are the mean over seeds ± the half-width of its 95% Student-t interval (as on the studies page; no ±
with one seed); gains are relative, computed from the means:
(tuned − ICL) / ICL × 100. Steps and η are listed per seed, in seed order."""


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}\n"


def main_tables(per_run: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 1 and 2 (and one for tasks of unknown family), formatted for Markdown, keyed by title."""
    if per_run.empty:
        return {}
    table = tables.main_table(per_run)
    extra = tables.varying(per_run)
    out = {}
    for family, title in (("classification", "Table 1: classification tasks"),
                          ("multiple_choice", "Table 2: multiple-choice tasks"),
                          ("other", "Other tasks")):
        part = table[table["family"] == family]
        if len(part):
            out[title] = tables.format_main(part, extra)
    return out


def momentum_section(per_run: pd.DataFrame) -> pd.DataFrame | None:
    if per_run.empty:
        return None
    table = tables.momentum_table(per_run)
    if table.empty:
        return None
    return tables.format_momentum(table, tables.varying(per_run, ("position_mode", "n_shot", "T")))


def heatmap_figures(tune: list[load.Run], per_run: pd.DataFrame, out: Path) -> list[Path]:
    """Figure 5, one file per (model, task, configuration other than η), for runs that recorded norms."""
    groups: dict[tuple, dict[float, list[load.Run]]] = {}
    for run in tune:
        if not run.steps or not all(s.get("grad_norm_k") for s in run.steps):
            continue
        m = run.meta
        key = (m["model"], m["task"], m["beta"], m["position_mode"], m["n_shot"], m["T"])
        groups.setdefault(key, {}).setdefault(float(m["eta"]), []).append(run)
    paths = []
    for key, by_eta in sorted(groups.items(), key=lambda kv: str(kv[0])):
        acc = {}
        for eta, runs in by_eta.items():
            rows = per_run[per_run["run"].isin([r.id for r in runs])].sort_values("seed")
            acc[eta] = (float(rows["best_acc"].mean()), [int(s) for s in rows["best_step"]])
        model, task, beta, pos, shots, T = key
        fig = figures.grad_norm_heatmaps(by_eta, acc, title=f"{model} · {task}  (pos={pos}, shots={shots}, T={T})")
        paths.append(figures.save(fig, out / f"fig5_grad_norms_{_slug(model, task, f'beta{beta:g}', pos, f'{shots}shot', f'T{T}')}.png"))
    return paths


def runs_listing(runs: list[load.Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(used, skipped) as display frames."""
    def ident(r):
        return {"run": r.id, "mode": r.mode, **{k: r.meta.get(k, "") for k in load.KEYS}}

    used = pd.DataFrame([{**ident(r), "steps": len(r.steps)} for r in load.used(runs)])
    skipped = pd.DataFrame([{**ident(r), "status": r.status, "reason": r.skip} for r in load.skipped(runs)])
    return used, skipped


def build(runs: list[load.Run], out: Path, metric: str = "acc", sources=()) -> Path:
    """Write out/report.md and the figures; return the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good = load.used(runs)
    # the paper's tables are about IFT; baselines (meta `method`) have their own page: python -m analysis.study
    tune = [r for r in good if r.mode == "tune" and method_info(r)["subject"]]
    eff = [r for r in good if r.mode == "efficiency"]
    per_run = tables.run_results(tune, metric)

    md = ["# Iterative forward tuning: results report\n",
          f"Sources: {', '.join(map(str, sources)) or '(given in code)'}  \n"
          f"Metric: `{metric}`. Runs used: {len(good)}; skipped: {len(runs) - len(good)} (listed at the end).\n",
          PROTOCOLS + "\n"]
    missing = sorted(set(r.id for r in tune) - set(per_run["run"]))
    if missing:
        md.append(f"Used runs without any `{metric}` value, left out of tables and figures: {', '.join(missing)}\n")
    for title, frame in main_tables(per_run).items():
        md.append(_section(title, markdown_table(frame)))
    mom = momentum_section(per_run)
    if mom is not None:
        md.append(_section("Table 3: momentum vs no momentum (β = 0)",
                           "Best-on-eval accuracy and the step where it peaks, paired by seed.\n\n"
                           + markdown_table(mom)))

    tune = [r for r in tune if r.id not in missing]
    if tune:
        steps = tables.steps_frame(tune, metric).dropna(subset=["acc"])
        line_keys = ["eta", *tables.varying(per_run)]
        p = figures.save(figures.accuracy_curves(steps, line_keys), out / "fig4_accuracy_curves.png")
        md.append(_section("Figure 4: accuracy vs optimisation steps",
                           f"Mean over seeds, band = its 95% t-interval.\n\n![Figure 4]({p.name})"))
        heat = heatmap_figures(tune, per_run, out)
        if heat:
            md.append(_section("Figure 5: pseudo-gradient norms ‖G_K‖ per layer and step",
                               "\n\n".join(f"![Figure 5]({p.name})" for p in heat)))
    if eff:
        frame = figures.efficiency_frame(eff)
        p = figures.save(figures.efficiency_figure(frame), out / "fig3_efficiency.png")
        shown = frame.drop(columns=["run", "capped"]).copy()
        for col in ("queries_per_s", "tokens_per_query", "peak_mem_mb"):
            shown[col] = shown[col].map(lambda v: f"{v:.1f}")
        shown["max_batch"] = [figures.max_batch_label(v, c) for v, c in zip(frame["max_batch"], frame["capped"])]
        md.append(_section("Figure 3: efficiency, ICL (demonstrations concatenated) vs tuned prefix",
                           f"![Figure 3]({p.name})\n\n" + markdown_table(shown)))

    used_df, skipped_df = runs_listing(runs)
    md.append(_section(f"Runs used ({len(used_df)})", markdown_table(used_df) if len(used_df) else "none"))
    md.append(_section(f"Runs skipped ({len(skipped_df)})",
                       markdown_table(skipped_df) if len(skipped_df) else "none"))
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def main(argv=None) -> Path:
    return cli.main("python -m analysis.report", __doc__,
                    lambda runs, args: build(runs, Path(args.out), args.metric, args.sources),
                    "report.md and the figures", argv)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
