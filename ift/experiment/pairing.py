"""Whether a job's run will pair with the runs of its seed already in the store, checked before the model loads.

Pages pair a seed's arms at ICL (step 1 must agree: analysis.arms.UnpairedRuns). Low-precision products
(bf16-mixed, bf16, fp16) round differently on different kinds of machine: CPUs with and without AMX, GPUs
(docs/results.md, *Precision*), enough to move a prediction; and the store key leaves the CPU kind out (a
restart on another node must find its finished runs). So a study continued on another kind of machine would
compute its new arms for hours and then have them refused by the page. This refuses them first.
fp32 is not checked: its last bits do not move a prediction in practice (the studies' fp32 runs from several
CPU kinds agree at every ICL row).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ift.experiment.checks import ConfigError
from ift.experiment.layout import META_FILE, SUMMARY_FILE

PORTABLE_DTYPES = ("fp32",)


def machine_kind(versions: dict, device: str | None) -> str | None:
    """The kind of machine whose last bits a run's numbers carry, from meta.json's `versions` and `device`: the
    GPU's name, or the CPU model and whether it has AMX tiles; None where the run did not record it."""
    if str(device or "").startswith("cuda"):
        return f"GPU {versions.get('gpu') or 'unknown'}"
    amx = versions.get("cpu_amx")
    if amx is None:
        return None
    return f"{versions.get('cpu') or 'unknown CPU'} {'with' if amx else 'without'} AMX"


def kinds_beside(store_path: Path, seed: int, n_shot: int, dtype: str) -> Counter:
    """How many runs of each machine kind the store holds for this seed (same task and model: the store
    directory's siblings) in this precision: the ended runs, and the job's own earlier attempt (which it resumes)."""
    kinds: Counter = Counter()
    parent = store_path.parent
    for meta_file in parent.glob(f"*/{META_FILE}") if parent.is_dir() else ():
        run = meta_file.parent
        if run != store_path and not (run / SUMMARY_FILE).is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue  # an unreadable run is the analysis's to list, not a reason to refuse this one
        if meta.get("seed") == seed and meta.get("n_shot") == n_shot and meta.get("dtype") == dtype:
            kind = machine_kind(meta.get("versions") or {}, meta.get("device"))
            if kind is not None:
                kinds[kind] += 1
    return kinds


def kind_here(device: str) -> str | None:
    """This machine's kind for a job on `device` (`machine_kind` of what the job would record)."""
    from ift.experiment.machine import versions
    from ift.models import resolve_device

    return machine_kind(versions(), resolve_device(device).type)


def check_machine_kind(job, store_path: Path) -> None:
    """Raise ConfigError when `job` would compute in a low precision on a kind of machine other than every kind
    its seed's runs in the store were made on (module docstring); `check_machine_kind=false` skips it. This
    machine's kind is looked up only when the store holds such runs (fp32 jobs, the common case, read nothing)."""
    dtype = job.model.dtype
    if not job.check_machine_kind or dtype in PORTABLE_DTYPES:
        return
    kinds = kinds_beside(store_path, job.seed, job.n_shot, dtype)
    here = kind_here(job.device) if kinds else None
    if here is None or here in kinds:
        return
    made_on = "; ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    raise ConfigError(
        f"{job.task_name} seed {job.seed}: this job would run in {dtype} on {here}, but the {sum(kinds.values())} "
        f"{dtype} run(s) of this seed in {store_path.parent} were made on another kind of machine ({made_on}). "
        f"{dtype} products round differently between kinds, so its ICL would not match theirs and no page could "
        f"pair them (docs/results.md, *Precision*). Run it on a machine of that kind; or every arm of the seed here, "
        f"in a new results_dir; or in fp32 (quant=none). check_machine_kind=false runs it anyway.")
