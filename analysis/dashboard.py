"""The RQ1-RQ4 dashboard of a wandb project: one saved workspace view per research question.

    python -m analysis.dashboard --entity me --project ift            # push the views (needs network + login)
    python -m analysis.dashboard --project ift --dry-run --out reports/dashboard

`spec(entity, project)` is the dashboard as plain data (views, each filtered on its RQ tag, with sections
of panels); it names only keys ift.experiment.tracking logs: per-step history against `step`, the
efficiency rows against `batch_size`, the summary, the config, the `grad_norm_heatmap` image and the
`grad_norms` / `efficiency` tables. `workspaces(spec)` turns it into `wandb-workspaces` views (the
`dashboard` extra: pip install -e '.[dashboard]'). Without network, login or that package the command
writes the spec, and the views' JSON when the package is there, to `--out`, says that nothing was pushed
and exits 1 (0 with --dry-run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ift import reach

MEAN = {"agg": "mean", "range": "stderr"}


def line(title, y, x="step", groupby=None):
    return {"type": "line", "title": title, "x": x, "y": list(y), "groupby": groupby, **MEAN}


def bars(title, metrics, groupby):
    return {"type": "bar", "title": title, "metrics": list(metrics), "groupby": groupby, **MEAN}


def media(title, key):
    return {"type": "media", "title": title, "key": key}


def table(title, key):
    return {"type": "table", "title": title, "key": key}


PROTOCOLS = ("icl_acc", "dev_step_acc", "best_eval_acc")  # ICL, honest (dev-chosen step), paper (best on eval)
COST = {"name": "Cost per tuning step", "panels": [
    line("Tokens spent tuning, per step", ["tune_tokens"]),
    line("Peak memory (MB), per step", ["peak_mem_mb"]),
    line("Seconds per step (tuning + scoring)", ["time_s", "tune_s"]),
]}
NORMS = {"name": "Per-layer ‖G‖ (paper Fig. 5)", "panels": [
    media("‖G‖ of K and V, layer × tuning step, per run", "grad_norm_heatmap"),
    table("‖G‖ table (step, layer, K, V)", "grad_norms"),
]}


def spec(entity: str | None, project: str) -> dict:
    """The dashboard as plain data: one view per research question (runs filtered on its tag)."""
    views = [
        {"name": "RQ1 ICL vs tuned", "tag": "rq1", "sections": [
            {"name": "Accuracy by task (paper Tables 1-2)", "panels": [
                bars("ICL vs IFT: dev-chosen step (honest) and best step on eval (paper)", PROTOCOLS, "task"),
                line("Accuracy vs tuning step, by task", ["acc"], groupby="task"),
                line("Dev accuracy vs tuning step, by task", ["dev_acc"], groupby="task"),
                bars("Baselines beside IFT (method)", PROTOCOLS, "method"),
            ]}, COST]},
        {"name": "RQ2 efficiency", "tag": "rq2", "sections": [
            {"name": "Memory and throughput by batch (paper Fig. 3)", "panels": [
                line("Peak memory (MB) vs batch: ICL vs tuned prefix", ["icl/peak_mem_mb", "tuned/peak_mem_mb"],
                     x="batch_size", groupby="task"),
                line("Queries per second vs batch", ["icl/queries_per_s", "tuned/queries_per_s"], x="batch_size",
                     groupby="task"),
                line("Tokens per query vs batch", ["icl/tokens_per_query", "tuned/tokens_per_query"], x="batch_size",
                     groupby="task"),
                bars("Largest batch that fits (GPU search)", ["icl_max_batch", "tuned_max_batch"], "task"),
                table("Measurements", "efficiency"),
            ]}]},
        {"name": "RQ3 steps and eta", "tag": "rq3", "sections": [
            {"name": "Accuracy vs T by η (paper Fig. 4)", "panels": [
                line("Accuracy vs tuning step, by η", ["acc"], groupby="eta"),
                line("Dev accuracy vs tuning step, by η", ["dev_acc"], groupby="eta"),
                bars("ICL, honest (dev-chosen step) and paper protocol (best on eval), by η", PROTOCOLS, "eta"),
                bars("Dev-chosen step, by η", ["dev_step", "best_eval_step"], "eta"),
            ]}, NORMS, COST]},
        {"name": "RQ4 momentum", "tag": "rq4", "sections": [
            {"name": "β = 0 vs β = 0.9 (paper Table 3)", "panels": [
                line("Accuracy vs tuning step, by β", ["acc"], groupby="beta"),
                bars("ICL, honest and paper protocol, by β", PROTOCOLS, "beta"),
                line("Dev accuracy vs tuning step, by β", ["dev_acc"], groupby="beta"),
            ]}, NORMS]},
    ]
    return {"entity": entity, "project": project, "views": views}


def panel_keys(s: dict) -> dict[str, set[str]]:
    """The keys the spec reads, by where they must be: history, summary, config, media, table."""
    keys: dict[str, set[str]] = {k: set() for k in ("history", "summary", "config", "media", "table", "x")}
    for view in s["views"]:
        for section in view["sections"]:
            for p in section["panels"]:
                if p.get("groupby"):
                    keys["config"].add(p["groupby"])
                if p["type"] == "line":
                    keys["history"].update(p["y"])
                    keys["x"].add(p["x"])
                elif p["type"] == "bar":
                    keys["summary"].update(p["metrics"])
                else:
                    keys[p["type"]].add(p["key"])
    return keys


def workspaces(s: dict) -> list:
    """The spec as `wandb_workspaces` views (no network needed to build them; `.save()` pushes one)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def panel(p):
        group = wr.Config(p["groupby"]) if p.get("groupby") else None
        if p["type"] == "line":
            return wr.LinePlot(title=p["title"], x=p["x"], y=p["y"], groupby=group, groupby_aggfunc=p["agg"],
                               groupby_rangefunc=p["range"])
        if p["type"] == "bar":
            return wr.BarPlot(title=p["title"], metrics=[wr.SummaryMetric(m) for m in p["metrics"]], groupby=group,
                              groupby_aggfunc=p["agg"], groupby_rangefunc=p["range"])
        if p["type"] == "media":
            return wr.MediaBrowser(title=p["title"], media_keys=[p["key"]])
        return wr.WeavePanelSummaryTable(table_name=p["key"])

    return [ws.Workspace(entity=s["entity"] or "", project=s["project"], name=f"ift {v['name']}",
                         sections=[ws.Section(name=sec["name"], panels=[panel(p) for p in sec["panels"]], is_open=True)
                                   for sec in v["sections"]],
                         runset_settings=ws.RunsetSettings(filters=[ws.Tags("tags").isin([v["tag"]])]))
            for v in s["views"]]


def unreachable(timeout: float = 3.0) -> str | None:
    """Why the wandb server cannot take the views now (no login, no route), or None."""
    import wandb

    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    why = reach.unreachable(base, timeout)  # first: wandb.Api() itself asks the server to check the login
    if why:
        return f"{base} cannot be reached ({why})"
    try:
        if not wandb.Api(timeout=timeout).api_key:
            return "not logged in (wandb login, or WANDB_API_KEY)"
    except Exception as err:  # noqa: BLE001
        return f"no wandb login ({type(err).__name__}: {err})"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default="ift", help="the wandb project the runs were logged to (logger.project)")
    parser.add_argument("--entity", help="the wandb entity (user or team) owning the project")
    parser.add_argument("--out", default="reports/dashboard", help="where the spec goes when it is not pushed")
    parser.add_argument("--dry-run", action="store_true", help="write the spec only, push nothing")
    args = parser.parse_args(argv)
    s = spec(args.entity, args.project)
    views, why = None, None
    try:
        views = workspaces(s)
    except ImportError:
        why = "wandb-workspaces is not installed (pip install -e '.[dashboard]')"
    if why is None:
        why = "--dry-run" if args.dry_run else (None if args.entity else "no --entity given") or unreachable()
    if why is None:
        try:
            for view in views:
                view.save()
                print(f"pushed: {view.url}")
            return 0
        except Exception as err:  # noqa: BLE001 - the spec is still worth having
            why = f"push failed ({type(err).__name__}: {err})"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dashboard-{args.project}.json"
    dumped = {**s, "wandb_views": [json.loads(v._to_model().model_dump_json(by_alias=True)) for v in views]
              if views else None}
    path.write_text(json.dumps(dumped, indent=2, ensure_ascii=False) + "\n")
    print(f"not pushed: {why}. Wrote the dashboard it would push ({len(s['views'])} views: "
          f"{', '.join(v['name'] for v in s['views'])}) to {path}")
    return 0 if args.dry_run else 1  # a push was asked for and did not happen


if __name__ == "__main__":
    sys.exit(main())
