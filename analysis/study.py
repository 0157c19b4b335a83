"""The studies page: every method against ICL on the same demonstrations and rows, under both protocols.

    python -m analysis.study results/studies --out docs/results

A *method* run (meta `method`: ift, zero_shot, repeat, more_demos, grad) records one row per step of its
own knob (IFT: tuning step; repeat: copies of the demonstrations; more_demos: multiple of n_shot; grad:
Adam steps + 1), each with eval and dev accuracy and its compute. An *arm* is a method together with the
settings a protocol may choose among. For each task and seed an arm picks one (run, step):

- honest (`dev`): the highest dev accuracy; ties go to the cheaper choice (fewer tuning tokens, then the
  earlier step, so a flat curve reports plain ICL);
- the paper's (`eval`): the highest evaluation accuracy over the same choices (optimistic by design);

and reports that choice's evaluation accuracy. ICL is step 1, identical in every run of a seed (same
demonstrations; checked). Over seeds: the mean and a 95% Student-t interval; the difference to ICL is
paired by seed (same demonstrations, same evaluation rows).
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from analysis import cli, load
from analysis.arms import candidates, drop_incomplete, twin_arms
from analysis.core import BOOTSTRAP_RESAMPLES, markdown_table
from analysis.fixed_steps import fixed_step_intervals, fixed_step_table
from analysis.same_setting import same_setting_table
from analysis.study_figures import (
    cosine_figure,
    cosine_frame,
    cosine_table,
    curves_figure,
    delta_figure,
    save,
)
from analysis.study_tables import (
    SPREAD_MIN_SEEDS,
    arm_table,
    cost_table,
    format_arms,
    head_to_head,
    headline,
    longer_tuning,
    main_arms,
    overview,
    spread_table,
    subject_settings,
    task_matrix,
    tie_sensitivity,
)
from ift.experiment.pairing import machine_kind

PAPER_PROTOCOLS = (
    "*Paper Δ* is the paper's protocol as implemented here: for each seed, the step (and setting) with the best "
    "evaluation accuracy. *One T per task*: one step (and setting) per task and method, the best on the evaluation "
    "accuracy averaged over seeds, then Δ vs ICL paired by seed at it. The paper reports one number per model and "
    "task, \"the best results obtained within Tmax steps\" (§4.2, RQ1), and names no seeds or averaging over runs: "
    "with one run per task the two coincide; with several, one T per task is the closer reading of its tables.")



def _machine_kind(run: load.Run) -> str:
    return machine_kind(run.meta.get("versions") or {}, run.meta.get("device")) or "CPU kind not recorded"


def precision_note(runs: list[load.Run]) -> str | None:
    """A warning when the page's bf16-mixed runs come from more than one CPU kind, else None.

    bf16 products round differently on CPUs with and without AMX (docs/results.md, Precision), so such a page
    is reproduced to the digit on no single machine, and its ICL or zero-shot rows may move by a row or so
    between kinds. fp32 runs are not counted (their last bits do not move a prediction in practice)."""
    kinds = Counter(_machine_kind(r) for r in runs if r.meta.get("dtype") == "bf16-mixed")
    if len(kinds) < 2:
        return None
    parts = "; ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    return (f"**Mixed CPU kinds.** This page's bf16-mixed runs come from more than one kind of CPU ({parts}). "
            "bf16 products round differently with and without AMX, so re-running them on one machine will not "
            "give this page to the digit; rerun the runs of one kind on the other (or in fp32) for a page that "
            "does.\n")


def setup_table(runs: list[load.Run]) -> pd.DataFrame | None:
    """Per task, the model and precision its runs used, when the page mixes them, else None.

    A page built from several studies' archives can put a bf16-mixed task beside an fp32 one (or two models'
    tasks side by side): each task's Δ is still paired within its own runs, but the mean over tasks pools
    them, and a reader must see that before reading it."""
    counts = Counter((r.meta.get("task"), r.meta.get("model"), r.meta.get("dtype") or "not recorded") for r in runs)
    if len({(model, dtype) for _, model, dtype in counts}) < 2:
        return None
    return pd.DataFrame([{"task": task, "model": model, "precision": dtype, "runs": n}
                         for (task, model, dtype), n in sorted(counts.items(), key=lambda kv: tuple(map(str, kv[0])))])


def twins_note(twins: dict[str, str]) -> str:
    """The line naming the labels a page lists once, each under the label analysis.arms.twin_arms keeps."""
    same: dict[str, list[str]] = {}
    for twin, kept in twins.items():
        same.setdefault(kept, []).append(twin)
    pairs = "; ".join(f"*{kept}* is also {' and '.join(f'*{t}*' for t in others)}" for kept, others in same.items())
    return (f"Arms that choose among exactly the same runs and steps on every task and seed are listed once: "
            f"{pairs}.\n")


def build(runs: list[load.Run], out: Path, metric: str = "acc", title: str = "Study results",
          max_step: int | None = None) -> Path:
    """The page. With `max_step`, every choice is made among steps ≤ max_step but in *Tuning longer*, which
    sets that against all steps: a study whose runs are being continued past max_step keeps its headline."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good = drop_incomplete([r for r in load.used(runs) if r.mode == "tune"])
    every_step = candidates(good, metric)
    cands = every_step if max_step is None or every_step.empty else every_step[every_step["step"] <= max_step]
    limit = "" if max_step is None else (f" Every table and figure but *Tuning longer* chooses among steps ≤ "
                                         f"{max_step} (step 1 = ICL); runs continued past it count there only.")
    md = [f"# {title}\n", f"Generated by `python -m analysis.study` from {len(good)} runs "
          f"({len(load.skipped(runs))} skipped, listed at the end). Metric `{metric}`, in %.{limit}\n",
          __doc__.split("\n\n", 2)[2].strip() + "\n"]
    note = precision_note(good)
    if note:
        md.append(note)
    setups = setup_table(good)
    if setups is not None:
        md += ["**Mixed models or precisions.** This page's runs are not all one model in one precision; per task:\n",
               markdown_table(setups) + "\n"]
    if cands.empty:
        md.append("No usable runs.\n")
    else:
        every_arm = arm_table(cands)
        twins = twin_arms(cands)  # an arm with exactly another's candidates: listed once, under one label
        shown = cands[~cands["arm"].isin(twins)]
        table = every_arm[~every_arm["arm"].isin(twins)]
        md += ["## Overview: every method against ICL\n",
               "Honest Δ = dev-chosen accuracy − ICL, paired by seed. *better* / *worse*: on that task, the 95% "
               "interval of the paired difference excludes 0. The mean over tasks has a 95% t-interval over tasks "
               "(each task's mean Δ one value): it says whether the gain carries across tasks.\n",
               PAPER_PROTOCOLS + "\n", markdown_table(overview(table)) + "\n"]
        if twins:
            md.append(twins_note(twins))
        md += ["## By task\n",
               "Honest Δ vs ICL (points, mean ± 95% interval over seeds, paired); ▲ / ▼: the interval excludes 0. "
               "The last column: how many seeds IFT's Δ would need for an interval of ± 3 points, if the "
               "seed-to-seed spread stays as measured (demonstrations, not evaluation rows, dominate it).\n",
               markdown_table(task_matrix(table)) + "\n"]
        fig = delta_figure(table)
        if fig is not None:
            md.append(f"![honest gains]({save(fig, out / 'study_deltas.png').name})\n")
        versus = head_to_head(shown)
        if not versus.empty and len(versus.columns) > 3:
            md += ["## IFT against the baselines, head to head\n",
                   f"{headline(cands)} minus each baseline, both chosen on dev, paired by seed (points, mean ± 95% "
                   "interval); ▲ / ▼: IFT better / worse (the interval excludes 0). The last row: the mean of the "
                   "tasks' differences with a t-interval over tasks.\n", markdown_table(versus) + "\n"]
        matched = same_setting_table(cands)
        if not matched.empty:
            md += ["## IFT against each control at its own settings\n",
                   "A control declared with the subject's settings (the random direction: IFT's update sizes at one "
                   "position mode, β and η, in a random direction) against the subject at the same settings: the "
                   "subject minus the control, both with the step chosen on dev, paired by seed (mean ± 95% interval; ▲ / ▼: the "
                   "interval excludes 0). Setting by setting both offer the same steps, so their dev candidates "
                   "match, also while a control has run some of the subject's settings only.\n",
                   markdown_table(matched) + "\n"]
        fixed = fixed_step_table(cands, every_arm)
        if not fixed.empty:
            md += ["## Each arm at a fixed step, and the step its dev rows chose\n",
                   "A method whose step is chosen per seed on the dev rows can gain from the choosing alone, and more "
                   "so the more candidates it offers. Per task and one-setting arm: its dev candidates per seed, the "
                   "Δ vs ICL (paired by seed, mean ± 95% interval; ▲ / ▼ where it excludes 0) at the step chosen on "
                   "dev, at the one step per task with the best mean evaluation accuracy (chosen on the evaluation "
                   "rows: a bound on what any fixed step can do, not a fair arm), at its last step, and the mean Δ "
                   "at every fixed step.\n", markdown_table(fixed) + "\n",
                   "### Every fixed step, with its interval\n",
                   "The mean Δ vs ICL above at each fixed step, with its 95% interval over seeds (paired by seed); ▲ / "
                   "▼ where it excludes 0. One interval per cell, none corrected for how many cells the table has: "
                   "a few cells of many crossing 0 is what chance gives.\n",
                   markdown_table(fixed_step_intervals(cands)) + "\n"]
        ties = tie_sensitivity(shown)
        if not ties.empty:
            md += ["## Ties on dev: the earliest or the latest step\n",
                   "A few dev rows often score several steps (or settings) alike. The page gives such ties to the "
                   "cheapest choice, then the earliest step (ift/protocol.py `CHEAPEST`), so a flat dev curve "
                   "reports plain ICL; here the same honest Δ vs ICL with ties to the costliest choice, then the "
                   "latest step (`COSTLIEST`). ▲ / ▼: the paired 95% interval excludes 0; the mean over tasks has a "
                   "t-interval over tasks.\n", markdown_table(ties) + "\n"]
        spread = spread_table(shown)
        if not spread.empty:
            md += ["## Spread over seeds: how much the demonstrations matter\n",
                   f"Each seed draws other demonstrations and another sample of evaluation rows (the same rows for "
                   f"every method of the seed), so a method's accuracy spreads over seeds by how much it depends on "
                   f"the demonstrations it read, plus the rows' share, which zero-shot (no demonstrations) shows. Per "
                   f"task with at least {SPREAD_MIN_SEEDS} seeds: the standard deviations over seeds of ICL and "
                   f"zero-shot (points) and each method's as a ratio to ICL's, both chosen on dev, with a 95% paired "
                   f"bootstrap interval over seeds ({BOOTSTRAP_RESAMPLES} resamples); ▼ / ▲: the interval lies below / above 1 (less / more dependent than ICL). One "
                   f"interval per cell, none corrected for how many cells the table has.\n",
                   markdown_table(spread) + "\n"]
        md += ["## Per task: baselines and IFT\n",
               "*Dev candidates*: the distinct states the dev rows chose among for one seed (a range where "
               "seeds differ): a setting's steps for one setting, every setting's for an arm pooling them; a step "
               "that a run and its continuation to a larger T both reach counts once, and so does ICL's step 1, "
               "which every setting starts from.\n",
               markdown_table(format_arms(main_arms(table))) + "\n"]
        settings = subject_settings(table)
        if not settings.empty:  # a page of baselines alone (zero-shot, repetition) has no IFT settings
            md += ["## IFT settings (position mode, β, η)\n", markdown_table(format_arms(settings)) + "\n"]
        short = max_step or 8
        longer = longer_tuning(every_step, short=short)
        if not longer.empty:
            md += [f"## Tuning longer: T ≤ {short} against all steps\n",
                   f"For IFT settings run past {short} steps: the honest Δ vs ICL when the dev rows choose among steps "
                   f"≤ {short} and among all steps, and the paired difference (▲ / ▼: the interval excludes 0).\n",
                   markdown_table(longer) + "\n"]
        fig = curves_figure(cands)
        if fig is not None:
            md.append(f"![accuracy vs step]({save(fig, out / 'study_curves.png').name})\n")
    costs = cost_table(good)
    if not costs.empty:
        hosts = sorted({str(r.meta.get("host")) for r in good})
        md += ["## Compute spent\n", f"Measured while the runs ran (hosts: {', '.join(hosts)}): a step is tuned once and "
               "scored on every evaluation and dev row, so scoring dominates; tuning tokens count what building the "
               "prefix ran forward (backward tokens apart).\n", markdown_table(costs) + "\n"]
    cos = cosine_frame(good)
    if not cos.empty:
        md += ["## Does the pseudo-gradient point where the true gradient does?\n",
               "Cosine similarity per layer between IFT's first pseudo-gradient G (step 2, from the ICL cache) and "
               "the descent direction −∇ of the demonstrations' leave-one-out answer loss at the same cache.\n",
               markdown_table(cosine_table(cos)) + "\n",
               f"![cosine]({save(cosine_figure(cos), out / 'study_cosine.png').name})\n"]
    skipped = load.skipped(runs)
    md.append(f"## Runs skipped ({len(skipped)})\n")
    md.append(markdown_table(pd.DataFrame([{"run": r.id, "reason": r.skip} for r in skipped])) + "\n"
              if skipped else "none\n")
    path = out / "study.md"
    path.write_text("\n".join(md))
    return path


def main(argv=None) -> Path:
    return cli.main("python -m analysis.study", __doc__,
                    lambda runs, args: build(runs, Path(args.out), args.metric, args.title, args.max_step),
                    "study.md and its figures", argv, options=_options)


def _options(ap) -> None:
    ap.add_argument("--title", default="Study results")
    ap.add_argument("--max-step", type=int, default=None,
                    help="choose among steps ≤ this in every table but 'Tuning longer' (default: all steps)")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
