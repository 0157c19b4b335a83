"""Tables 1-3 and the used/skipped listing, from synthetic result stores with known numbers.

Every expected number below is worked out by hand in the comments next to the data.
"""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from analysis import core, load, report, tables
from ift.jsonl import parse_jsonl

L = 3  # layers in the synthetic runs


def norms(t: int, seed: int, eta: float) -> list[float]:
    """‖G‖ per layer at step t: 0 at step 1 (no update yet), then (t-1)·(layer+1)·(1+seed)."""
    return [float((t - 1) * (layer + 1) * (1 + seed)) for layer in range(L)]


def write_job(d: Path, *, acc, dev=None, status="finished", summary=True, error=None, mode="tune",
              efficiency=None, model="m1", task="sst2", eta=0.01, beta=0.9, seed=0, T=None, finished="2026-01-01",
              position_mode="continue", n_shot=1) -> Path:
    """One job dir of the results store, in the format of docs/design.md."""
    d.mkdir(parents=True)
    T = T or len(acc)
    meta = {"config_hash": "x", "status": status, "error": error, "model": model, "task": task, "seed": seed,
            "eta": eta, "beta": beta, "T": T, "position_mode": position_mode, "n_shot": n_shot,
            "demonstrations": {"text": "d", "indices": [0], "split": "train"}, "versions": {},
            "started": "2026-01-01", "finished": finished, "mode": mode}
    (d / "meta.json").write_text(json.dumps(meta))
    dev = dev or [None] * len(acc)
    with open(d / "steps.jsonl", "w") as f:
        for t, (a, v) in enumerate(zip(acc, dev), start=1):
            f.write(json.dumps({"step": t, "acc": a, "acc_norm": a / 2, "dev_acc": v,
                                "dev_acc_norm": None if v is None else v / 2, "grad_norm_k": norms(t, seed, eta),
                                "grad_norm_v": [2 * x for x in norms(t, seed, eta)], "time_s": 1.0,
                                "peak_mem_mb": 10.0}) + "\n")
    if summary:
        (d / "summary.json").write_text(json.dumps({"icl_acc": acc[0], "status": status, "last_step": len(acc)}))
    if efficiency:
        (d / "efficiency.jsonl").write_text("".join(json.dumps(r) + "\n" for r in efficiency))
    return d


# Scenario A: one eta, three seeds on sst2, one seed on copa, plus runs that must be skipped.
SST2 = {  # seed: (eval acc per step, dev acc per step)
    0: ([.50, .60, .70, .65], [.5, .7, .6, .7]),    # best eval 70 @3; dev best .7 @2 (tie with 4: earliest) -> 60
    1: ([.52, .58, .58, .62], [.4, .5, .5, .45]),   # best eval 62 @4; dev best .5 @2 (tie with 3) -> 58
    2: ([.54, .66, .61, .60], [.6, .6, .8, .7]),    # best eval 66 @2; dev best .8 @3 -> 61
}
# cells: mean ± 95% t half-width = t(0.975, 2) / √3 · sample std = 2.4841 · std
# ICL 50, 52, 54 -> 52.00 ± 4.97 (std 2); eval 70, 62, 66 -> 66.00 ± 9.94 (std 4), gain 14/52 = +26.92%
# dev 60, 58, 61 -> 59.67 ± 3.79 (std 1.5275), gain 7.667/52 = +14.74%
T3 = stats.t.ppf(0.975, 2) / 3 ** 0.5  # 2.4841
T2 = stats.t.ppf(0.975, 1) / 2 ** 0.5  # 8.9846


@pytest.fixture
def store_a(tmp_path):
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for seed, (acc, dev) in SST2.items():
        write_job(root / str(seed), acc=acc, dev=dev, seed=seed)
    # copa, one seed: best 62 @2; all dev equal -> step 1 -> 60 (gain +0.00%)
    write_job(root / "3", acc=[.60, .62, .61, .59], dev=[.5, .5, .5, .5], task="copa")
    # to be skipped; their very high accuracies would show if they were averaged in
    write_job(root / "4", acc=[.99, .99], seed=5, status="failed", error="CUDA out of memory", summary=False, T=4)
    write_job(root / "5", acc=[.99, .99], seed=6, status="diverged", error="non-finite keys at step 3, layer 0", T=4)
    write_job(root / "6", acc=[.99], seed=7, status="running", summary=False, T=4)
    write_job(root / "7", acc=[.99, .99], seed=8, T=4)  # says finished, but only 2 of 4 steps recorded
    write_job(root / "8", acc=[.99] * 4, seed=0, finished="2025-01-01")  # older duplicate of seed 0
    (root / "9").mkdir()
    (root / "9" / "meta.json").write_text("{not json")
    return tmp_path / "multirun"


def main_rows(runs, metric="acc"):
    per_run = tables.run_results(load.used(runs), metric)
    return tables.main_table(per_run).set_index(["model", "task"]), per_run


def test_main_table_numbers(store_a):
    runs = load.load([store_a])
    table, per_run = main_rows(runs)
    assert len(per_run) == 4  # 3 sst2 seeds + copa
    sst2 = table.loc[("m1", "sst2")]
    assert sst2["seeds"] == 3
    assert sst2["icl_mean"] == pytest.approx(52) and sst2["icl_ci"] == pytest.approx(2 * T3)
    assert sst2["eval_mean"] == pytest.approx(66) and sst2["eval_ci"] == pytest.approx(4 * T3)
    assert sst2["eval_gain"] == pytest.approx(14 / 52 * 100)
    assert sst2["eval_steps"] == [3, 4, 2]
    assert sst2["dev_mean"] == pytest.approx(179 / 3)
    assert sst2["dev_ci"] == pytest.approx(pd.Series([60, 58, 61]).std(ddof=1) * T3)
    assert sst2["dev_ci"] == pytest.approx(3.7946, abs=1e-4)
    assert sst2["dev_gain"] == pytest.approx((179 / 3 - 52) / 52 * 100)
    assert sst2["dev_steps"] == [2, 2, 3]
    copa = table.loc[("m1", "copa")]
    assert copa["seeds"] == 1 and math.isnan(copa["icl_ci"]) and math.isnan(copa["eval_ci"])  # one seed: none
    assert (copa["eval_mean"], copa["eval_steps"], copa["dev_mean"], copa["dev_steps"]) == (pytest.approx(62), [2], pytest.approx(60), [1])


def test_markdown_cells(store_a):
    out = report.main_tables(tables.run_results(load.used(load.load([store_a]))))
    t1, t2 = out["Table 1: classification tasks"], out["Table 2: multiple-choice tasks"]
    row = t1.iloc[0].to_dict()
    assert row == {"model": "m1", "task": "sst2", "η": "0.01", "seeds": 3, "ICL": "52.00 ± 4.97",
                   "tuned (best on eval)": "66.00 ± 9.94", "gain (best on eval)": "+26.92%",
                   "step (best on eval)": "3, 4, 2", "tuned (dev-chosen)": "59.67 ± 3.79",
                   "gain (dev-chosen)": "+14.74%", "step (dev-chosen)": "2, 2, 3"}
    row = t2.iloc[0].to_dict()
    assert (row["ICL"], row["tuned (best on eval)"], row["gain (best on eval)"], row["tuned (dev-chosen)"],
            row["gain (dev-chosen)"]) == ("60.00", "62.00", "+3.33%", "60.00", "+0.00%")
    md = core.markdown_table(t1).splitlines()
    assert md[0].startswith("| model | task | η | seeds | ICL |") and md[1].startswith("|---|")
    assert md[2] == ("| m1 | sst2 | 0.01 | 3 | 52.00 ± 4.97 | 66.00 ± 9.94 | +26.92% | 3, 4, 2 | 59.67 ± 3.79 "
                     "| +14.74% | 2, 2, 3 |")


def test_acc_norm_metric(store_a):
    table, _ = main_rows(load.load([store_a]), "acc_norm")  # acc_norm = acc / 2 in the synthetic steps
    assert table.loc[("m1", "sst2"), "eval_mean"] == pytest.approx(33)
    assert table.loc[("m1", "sst2"), "dev_mean"] == pytest.approx(179 / 6)


def test_skipped_runs_listed_with_reasons(store_a):
    runs = load.load([store_a])
    skipped = {Path(r.id).name: r.skip for r in load.skipped(runs)}
    assert skipped["4"] == "failed: CUDA out of memory"
    assert skipped["5"].startswith("diverged after step 2: non-finite keys")
    assert skipped["6"].startswith("incomplete: status running")
    assert skipped["7"] == "incomplete: 2 of T=4 steps recorded"
    assert skipped["8"].startswith("duplicate of ") and skipped["8"].split()[2].endswith("/0")
    assert skipped["9"].startswith("unreadable: ") and "9/meta.json: not valid JSON" in skipped["9"]
    assert sorted(Path(r.id).name for r in load.used(runs)) == ["0", "1", "2", "3"]


def test_missing_summary_and_torn_last_line(tmp_path):
    write_job(tmp_path / "a", acc=[.5, .6], summary=False)
    d = write_job(tmp_path / "b", acc=[.5, .6], T=3)
    with open(d / "steps.jsonl", "a") as f:
        f.write('{"step": 3, "acc": 0.')  # killed mid-write
    runs = {Path(r.id).name: r for r in load.load([tmp_path])}
    assert runs["a"].skip == "incomplete: no summary.json"
    assert runs["b"].skip == "incomplete: 2 of T=3 steps recorded"


def test_a_torn_middle_line_makes_the_run_unreadable_not_silently_shorter(tmp_path):
    d = write_job(tmp_path / "c", acc=[.5, .6])
    lines = (d / "steps.jsonl").read_text().splitlines()
    (d / "steps.jsonl").write_text("\n".join([lines[0][:-3], lines[1]]) + "\n")
    (run,) = load.load([tmp_path])
    assert run.skip.startswith("unreadable: ValueError: ") and "steps.jsonl: line 1 is not valid JSON" in run.skip


def test_single_job_dir_source(store_a):
    runs = load.load([store_a / "2026-01-01" / "12-00-00" / "0"])
    assert len(runs) == 1 and runs[0].skip is None


# Scenario B: a sweep over eta; each protocol picks eta per seed.
SWEEP = {  # (seed, eta): (eval acc, dev acc)
    (0, 0.1): ([.50, .80, .55, .50], [.5, .6, .6, .6]),     # best 80 @2; dev .6 @2 -> 80
    (0, 0.01): ([.50, .55, .70, .75], [.5, .55, .7, .65]),  # best 75 @4; dev .7 @3 -> 70   => eval: 0.1, dev: 0.01
    (1, 0.1): ([.52, .60, .66, .64], [.5, .65, .65, .6]),   # best 66 @3; dev .65 @2 -> 60
    (1, 0.01): ([.52, .56, .66, .58], [.5, .6, .65, .6]),   # best 66 @3; dev .65 @3 -> 66
    # seed 1, eval: tie 66 @3 -> the smaller eta (0.01); dev: tie .65 -> the earlier step (eta 0.1 @2)
}


def test_eta_sweep_protocols(tmp_path):
    for i, ((seed, eta), (acc, dev)) in enumerate(SWEEP.items()):
        write_job(tmp_path / str(i), acc=acc, dev=dev, seed=seed, eta=eta)
    runs = load.load([tmp_path])
    per_run = tables.run_results(load.used(runs))
    row = tables.main_table(per_run).iloc[0]
    assert row["eval_etas"] == [0.1, 0.01] and row["eval_steps"] == [2, 3]
    assert row["eval_mean"] == pytest.approx(73) and row["eval_ci"] == pytest.approx(2 ** 0.5 * 7 * T2)
    assert row["dev_etas"] == [0.01, 0.1] and row["dev_steps"] == [3, 2]
    assert row["dev_mean"] == pytest.approx(65) and row["dev_ci"] == pytest.approx(2 ** 0.5 * 5 * T2)
    cells = report.main_tables(per_run)["Table 1: classification tasks"].iloc[0].to_dict()
    assert "η" not in cells
    assert (cells["ICL"], cells["tuned (best on eval)"], cells["gain (best on eval)"], cells["η (best on eval)"],
            cells["tuned (dev-chosen)"], cells["gain (dev-chosen)"], cells["η (dev-chosen)"]) == (
        "51.00 ± 12.71", "73.00 ± 88.94", "+43.14%", "0.1, 0.01", "65.00 ± 63.53", "+27.45%", "0.01, 0.1")


# Scenario C: momentum (beta = 0.9) against beta = 0, same eta, two seeds.
MOMENTUM = {  # (seed, beta): eval acc
    (0, 0.9): [.50, .70, .60, .60],  # 70 @2
    (1, 0.9): [.50, .60, .72, .70],  # 72 @3   -> 71.00 ± 12.71 (std 1.41), steps 2, 3
    (0, 0.0): [.50, .55, .60, .65],  # 65 @4
    (1, 0.0): [.50, .52, .60, .60],  # 60 @3   -> 62.50 ± 31.77 (std 3.54), steps 4, 3
}


def test_momentum_table(tmp_path):
    for i, ((seed, beta), acc) in enumerate(MOMENTUM.items()):
        write_job(tmp_path / str(i), acc=acc, seed=seed, beta=beta)
    write_job(tmp_path / "unpaired", acc=[.5, .9, .9, .9], seed=2, beta=0.9)  # no beta=0 partner: not in Table 3
    per_run = tables.run_results(load.used(load.load([tmp_path])))
    t3 = tables.momentum_table(per_run)
    assert len(t3) == 1
    r = t3.iloc[0]
    assert (r["beta"], r["seeds"], r["m_steps"], r["nm_steps"]) == (0.9, 2, [2, 3], [4, 3])
    assert r["m_mean"] == pytest.approx(71) and r["nm_mean"] == pytest.approx(62.5)
    cells = report.momentum_section(per_run).iloc[0].to_dict()
    assert cells == {"model": "m1", "task": "sst2", "η": "0.01", "seeds": 2, "β": "0.9",
                     "with momentum": "71.00 ± 12.71", "step": "2, 3", "w/o M (β=0)": "62.50 ± 31.77",
                     "step (w/o M)": "4, 3"}
    # beta varies, so Tables 1-2 show it as a column and keep beta=0 runs in their own row
    t1 = report.main_tables(per_run)["Table 1: classification tasks"]
    assert list(t1["beta"]) == [0.0, 0.9]


# ---------------------------------------------------------------- wandb source

class FakeWandbRun:
    def __init__(self, rid, state, config, summary, history):
        self.id, self.state, self.config, self.summary, self._history = rid, state, config, summary, history

    def scan_history(self):
        return iter(self._history)


class FakeApi:
    def __init__(self, runs):
        self._runs, self.asked = runs, []

    def runs(self, path):
        self.asked.append(path)
        return self._runs


def wandb_runs_from(store: Path) -> list[FakeWandbRun]:
    """The synthetic store as wandb would hold it: meta as config, per-layer norms as scalar keys."""
    out = []
    for job in sorted(store.rglob("meta.json")):
        try:
            meta = json.loads(job.read_text())
        except ValueError:
            continue
        steps = parse_jsonl((job.parent / "steps.jsonl").read_text())
        history = []
        for s in steps:
            row = {k: v for k, v in s.items() if not k.startswith("grad_norm")}
            row.update({f"grad_norm_k/{i}": x for i, x in enumerate(s["grad_norm_k"])})
            row["grad_norm_v"] = s["grad_norm_v"]
            history.append({**row, "_step": s["step"], "_runtime": 1.0})
        summary = json.loads((job.parent / "summary.json").read_text()) if (job.parent / "summary.json").exists() else {}
        state = {"finished": "finished", "diverged": "finished", "failed": "crashed", "running": "running"}[meta["status"]]
        config = {k: v for k, v in meta.items() if k != "status"}
        out.append(FakeWandbRun(job.parent.name, state, config, {**summary, "_runtime": 3}, history))
    return out


def test_wandb_source_gives_the_same_tables(store_a, monkeypatch):
    api = FakeApi(wandb_runs_from(store_a))
    monkeypatch.setattr("wandb.Api", lambda: api)
    runs = load.load(["wandb:me/ift"])
    assert api.asked == ["me/ift"]
    local = tables.main_table(tables.run_results(load.used(load.load([store_a]))))
    remote = tables.main_table(tables.run_results(load.used(runs)))
    pd.testing.assert_frame_equal(local, remote)
    by_id = {r.id.rsplit("/", 1)[1]: r for r in runs}
    assert by_id["0"].id == "wandb:me/ift/0"
    assert by_id["0"].steps[1]["grad_norm_k"] == norms(2, 0, 0.01)  # per-layer scalars back to a list
    assert "_step" not in by_id["0"].steps[0]
    assert by_id["4"].skip == "failed: CUDA out of memory"  # crashed run, no status in its summary
    assert by_id["5"].skip.startswith("diverged")  # summary status wins over the wandb state
    assert by_id["6"].skip.startswith("incomplete")


# ---------------------------------------------------------------- the command

def test_cli_writes_report(store_a, tmp_path, capsys):
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as refused:  # failed, incomplete and unreadable runs: no page without consent
        report.main([str(store_a), "--out", str(out)])
    err = capsys.readouterr().err
    assert refused.value.code == 1 and not (out / "report.md").exists()
    assert "/4: failed: CUDA out of memory\n" in err and "4 run(s) unreadable, damaged, failed or incomplete" in err
    path = report.main([str(store_a), "--out", str(out), "--allow-missing"])
    assert capsys.readouterr().out.strip() == str(out / "report.md") == str(path)
    text = path.read_text()
    assert "## Table 1: classification tasks" in text and "## Table 2: multiple-choice tasks" in text
    assert "| m1 | sst2 | 0.01 | 3 | 52.00 ± 4.97 | 66.00 ± 9.94 | +26.92% |" in text
    assert "## Runs used (4)" in text and "## Runs skipped (6)" in text
    skipped = text.split("## Runs skipped")[1]
    for reason in ("failed: CUDA out of memory", "diverged after step 2", "incomplete: status running",
                   "incomplete: 2 of T=4 steps recorded", "duplicate of", "unreadable"):
        assert reason in skipped
    assert (out / "fig4_accuracy_curves.png").stat().st_size > 0
    assert [p.name for p in out.glob("fig5_*.png")] and "fig5_grad_norms_m1_sst2" in text
    assert "Table 3" not in text and "Figure 3" not in text  # no beta=0 runs, no efficiency runs


def test_cli_rejects_empty_source(tmp_path):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])


def test_runs_without_dev_set_and_unknown_task_family(tmp_path):
    write_job(tmp_path / "a", acc=[.5, .6, .55], task="mytask")  # no dev accuracies recorded; not a known task
    per_run = tables.run_results(load.used(load.load([tmp_path])))
    out = report.main_tables(per_run)
    assert list(out) == ["Other tasks"]
    cells = out["Other tasks"].iloc[0].to_dict()
    assert (cells["tuned (best on eval)"], cells["step (best on eval)"]) == ("60.00", "2")
    assert (cells["tuned (dev-chosen)"], cells["gain (dev-chosen)"], cells["step (dev-chosen)"]) == ("–", "–", "–")
    assert tables.task_family("mytask", {"task_type": "classification"}) == "classification"
    assert tables.task_family("demo") == "classification"  # from its built-in spec (it has label_words)


def test_report_when_every_run_is_skipped(tmp_path):
    write_job(tmp_path / "s" / "a", acc=[.5], status="failed", error="boom", summary=False, T=3)
    d = write_job(tmp_path / "s" / "b", acc=[.5, .6])
    (d / "steps.jsonl").write_text('{"step": 1, "acc": null}\n{"step": 2, "acc": 0.6}\n')
    text = report.main([str(tmp_path / "s"), "--out", str(tmp_path / "out"), "--allow-missing"]).read_text()
    assert "## Runs used (0)" in text and "Table 1" not in text and "Figure 4" not in text
    assert "failed: boom" in text and "malformed: a step without a numeric acc" in text


def test_metric_missing_is_said_not_silent(tmp_path):
    d = write_job(tmp_path / "s" / "a", acc=[.5, .6])
    (d / "steps.jsonl").write_text('{"step": 1, "acc": 0.5}\n{"step": 2, "acc": 0.6}\n')  # no acc_norm
    text = report.main([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--metric", "acc_norm"]).read_text()
    assert f"Used runs without any `acc_norm` value, left out of tables and figures: {d}" in text
