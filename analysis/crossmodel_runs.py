"""The cross-model page's runs: which cross-model arm a run belongs to, one model's runs after the page's rules
(`prepare`), their candidate rows, and what the page says of them (the runs table, the seeds, the shared
demonstrations)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import load
from analysis.arms import candidates, drop_incomplete
from analysis.methods import method_info, named_setting

ZERO, DEFAULT, PAPER, GRAD, REPEAT = "zero-shot", "IFT default", "paper's setting", "gradient tuning", "repetition"
ARMS = (ZERO, DEFAULT, PAPER, GRAD, REPEAT)  # column order
ARM_TEXT = {ZERO: "the query alone, no demonstrations (method zero_shot)",
            DEFAULT: "IFT, position mode aligned, η 0.1, β 0.9; T chosen",
            PAPER: "IFT as the paper runs it: position mode continue, η 0.01, β 0.9; T chosen",
            GRAD: "gradient tuning of the demonstrations' cache (method grad; lr and Adam steps chosen)",
            REPEAT: "the demonstrations repeated r times (method repeat; r chosen)"}
RIVALS = (ZERO, GRAD, REPEAT)  # what IFT default is compared with head to head
LONG = 15  # the second table: choices among steps ≤ 15, where every model has them


def arm_of(run: load.Run) -> str | None:
    """The cross-model arm a run belongs to (its method's name in prose, or the name of its setting among the
    method's named ones: MethodInfo), or None (an arm not compared here, other η, modes, β, run-time early
    stopping)."""
    if run.meta.get("patience") is not None:
        return None
    name = named_setting(method_info(run), run.meta)
    return name if name in ARMS else None


# ---------------------------------------------------------------- the runs of one model

@dataclass
class Model:
    """One model's runs after the cross-model rules, and what each rule left out (for the page)."""
    label: str
    sources: list[str]
    runs: list[load.Run] = field(default_factory=list)       # everything read (skipped ones carry a reason)
    kept: list[load.Run] = field(default_factory=list)       # the runs the page rests on
    outside: int = 0                                         # finished runs of no compared arm
    copies: list[tuple[load.Run, load.Run]] = field(default_factory=list)  # (shorter, kept longer) of one arm+seed
    seeds: dict[tuple, list] = field(default_factory=dict)   # (task, n_shot) -> the seeds every arm has
    left: dict[tuple, dict[str, list]] = field(default_factory=dict)  # (task, n_shot) -> arm -> seeds left out


def parse_model(spec: str) -> tuple[str, list[str]]:
    """'LABEL=SRC[,SRC...]' -> (label, sources); a ValueError names what is wrong."""
    label, eq, rest = spec.partition("=")
    label, sources = label.strip(), [s.strip() for s in rest.split(",") if s.strip()]
    if not eq or not label or not sources:
        raise ValueError(f"--model {spec!r}: expected LABEL=SRC[,SRC...] (a label, '=', then store directories "
                         f"or runs.tar.gz archives separated by commas)")
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise ValueError(f"--model {spec!r}: source(s) {', '.join(missing)} do not exist")
    return label, sources


def task_of(run: load.Run) -> tuple:
    return run.meta.get("task"), run.meta.get("n_shot")


def prepare(label: str, sources: list[str], runs: list[load.Run] | None = None) -> Model:
    """Read a model's sources and apply the rules: one run per arm setting and seed (a run to T = 15 and one to
    T = 8 of the same setting and seed: the longer is kept), one seed set per task that every arm present has,
    then analysis.study's complete-or-absent rule."""
    m = Model(label, list(sources), runs if runs is not None else load.load(sources))
    tune = [r for r in load.used(m.runs) if r.mode == "tune"]
    mine = [r for r in tune if arm_of(r)]
    m.outside = len(tune) - len(mine)
    longest, m.copies = load.longest(mine)
    have: dict[tuple, dict[str, set]] = {}
    for r in longest:
        have.setdefault(task_of(r), {}).setdefault(arm_of(r), set()).add(r.meta.get("seed"))
    for task, arms in have.items():
        common = set.intersection(*arms.values())
        m.seeds[task] = sorted(common, key=str)
        m.left[task] = {a: sorted(s - common, key=str) for a, s in arms.items() if s - common}
    m.kept = drop_incomplete(sorted((r for r in longest if r.meta.get("seed") in m.seeds[task_of(r)]),
                                    key=lambda r: r.id))
    return m


def frame(models: list[Model], metric: str = "acc") -> pd.DataFrame:
    """analysis.study's candidate rows for every model, one per (run, step), `model` = the model's label and
    `arm` = its cross-model arm."""
    parts = []
    for m in models:
        c = candidates(m.kept, metric)
        if c.empty:
            continue
        arms = {r.id: arm_of(r) for r in m.kept}
        c = c.drop_duplicates(["run", "step"]).assign(model=m.label)
        parts.append(c.assign(arm=c["run"].map(arms)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()



def reach(models: list[Model]) -> dict[tuple, int]:
    """(model, task, n_shot, arm) -> the last step every kept run of that arm has."""
    out: dict[tuple, int] = {}
    for m in models:
        for r in m.kept:
            k = (m.label, *task_of(r), arm_of(r))
            out[k] = min(out.get(k, 10 ** 9), len(r.steps))
    return out


# ---------------------------------------------------------------- what the page says of the runs

def _ranges(values) -> str:
    """[0, 1, 2, 3, 7] -> '0-3, 7' (non-integers listed as they are)."""
    ints = sorted(v for v in values if isinstance(v, int))
    out, i = [], 0
    while i < len(ints):
        j = i
        while j + 1 < len(ints) and ints[j + 1] == ints[j] + 1:
            j += 1
        out.append(str(ints[i]) if i == j else f"{ints[i]}-{ints[j]}")
        i = j + 1
    return ", ".join(out + [str(v) for v in values if not isinstance(v, int)])


def runs_table(m: Model) -> pd.DataFrame:
    rows = {}
    for r in m.kept:
        k = (*task_of(r), arm_of(r))
        row = rows.setdefault(k, {"task": k[0], "n_shot": k[1], "arm": k[2], "runs": 0, "seeds": set(), "T": set(),
                                  "precision": set(), "rows (eval / dev)": set()})
        row["runs"] += 1
        row["seeds"].add(r.meta.get("seed"))
        row["T"].add(len(r.steps))
        row["precision"].add(str(r.meta.get("dtype")))
        row["rows (eval / dev)"].add(f"{r.meta.get('n_eval')} / {r.meta.get('n_dev')}")
    out = []
    for k in sorted(rows, key=lambda k: (str(k[0]), str(k[1]), ARMS.index(k[2]))):
        row = rows[k]
        out.append({**row, "seeds": _ranges(row["seeds"]), "T": ", ".join(map(str, sorted(row["T"]))),
                    "precision": ", ".join(sorted(row["precision"])),
                    "rows (eval / dev)": ", ".join(sorted(row["rows (eval / dev)"]))})
    return pd.DataFrame(out)


def seed_notes(m: Model) -> list[str]:
    out = []
    for task in sorted(m.left, key=str):
        if m.left[task]:
            left = "; ".join(f"{a} {_ranges(s)}" for a, s in sorted(m.left[task].items(), key=lambda x: ARMS.index(x[0])))
            out.append(f"- {task[0]} ({task[1]}-shot): seeds {_ranges(m.seeds[task])} used; left out: {left}")
    return out


def demo_check(models: list[Model]) -> list[str]:
    """Do the models read the same demonstrations per (task, seed), and as many evaluation and dev rows per
    task? (the recipe that draws them is model-independent)"""
    demos: dict[tuple, dict[str, tuple]] = {}
    sizes: dict[tuple, dict[str, set]] = {}
    for m in models:
        for r in m.kept:
            sizes.setdefault(task_of(r), {}).setdefault(m.label, set()).add((r.meta.get("n_eval"), r.meta.get("n_dev")))
            d = r.meta.get("demonstrations") or {}
            if d.get("indices") is not None:
                demos.setdefault((*task_of(r), r.meta.get("seed")), {})[m.label] = (d.get("split"), tuple(d["indices"]))
    said = _rows_check(sizes, len(models))
    shared = {k: v for k, v in demos.items() if len(v) == len(models)}
    differ = sorted((k for k, v in shared.items() if len(set(v.values())) > 1), key=str)
    if not shared:
        return said + ["No (task, seed) that every model ran, so no demonstrations to compare."]
    if not differ:
        return said + [f"Every model read the same demonstrations (split and row indices, from meta) on all "
                f"{len(shared)} (task, seed) pairs they share."]
    return said + [f"The demonstrations differ between models on {len(differ)} of {len(shared)} shared (task, seed) "
            f"pairs: " + ", ".join(f"{t} seed {s}" for t, _, s in differ) + "."]


def _rows_check(sizes: dict[tuple, dict[str, set]], n_models: int) -> list[str]:
    tasks = sorted((t for t, v in sizes.items() if len(v) == n_models), key=str)
    odd = [t for t in tasks if len({frozenset(v) for v in sizes[t].values()}) > 1]
    if not tasks:
        return []
    if not odd:
        return [f"The models score the same numbers of evaluation and dev rows on all {len(tasks)} tasks they share."]
    said = [f"{t[0]} ({'; '.join(f'{m}: {sorted(map(str, v))}' for m, v in sorted(sizes[t].items()))})" for t in odd]
    return ["The numbers of (evaluation, dev) rows differ between models on " + ", ".join(said) + "."]
