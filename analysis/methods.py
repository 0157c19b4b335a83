"""What the analysis knows of a run's method: what the method declared (ift.experiment.methods.MethodInfo),
never its name.

A run records it in meta.json as `method_info`; a run recorded before that existed (the committed archives)
gets it derived here, in this one place, from the registered Method class, by the same function the job
calls. Texts with braces are filled from the run's own meta (`fill`).
"""
from __future__ import annotations

import ift.experiment.controls  # noqa: F401 - registers issue 42's controls, as ift.experiment.config does
from ift.experiment.methods import REGISTRY


def method_info(run) -> dict:
    """The run's (an analysis.load.Run, which reads this when it sorts runs into used and skipped, so it is not
    imported here) meta.json `method_info`, or, for a run recorded before it, its registered method's."""
    info = run.meta.get("method_info")
    if info is None:
        cls = REGISTRY.get(run.method)
        if cls is None:
            raise ValueError(f"{run.id}: meta.json has no method_info and method {run.method!r} is not a registered "
                             f"method (registered: {', '.join(sorted(REGISTRY))}); record the run again, or import "
                             f"the module that defines its Method class before reading it")
        info = cls.info(run.meta)
    elif "length" not in info:  # recorded before MethodInfo.length: its registered class's, else the default T
        cls = REGISTRY.get(run.method)
        info = {**info, "length": cls.info(run.meta)["length"] if cls else "T"}
    # a run offers its steps as meta.json says last: a job that fits fewer steps to the model's window lowers T
    return {**info, "candidates": int(run.meta.get("T") or info["candidates"])}


def fill(text: str, meta: dict) -> str:
    """A MethodInfo text with its braces filled from the run's meta.json ("lr={lr:g}" -> "lr=0.001")."""
    return text.format_map(meta)


def setting(info: dict, meta: dict) -> str:
    """The run's setting as a page names it: the method's label, then its settings ("gradient tuning lr=0.001")."""
    own = fill(info["setting"], meta)
    return f"{info['label']} {own}" if own else info["label"]


def named_setting(info: dict, meta: dict) -> str | None:
    """The name of the run's setting among the method's named ones (`MethodInfo.named`: "IFT default"), else
    its plain name when the method has no settings to name, else None."""
    if not info["named"]:
        return info["plain"] or info["label"]
    for name, values in info["named"]:
        if all(_same(meta.get(k), v) for k, v in values):
            return name
    return None


def _same(x, value) -> bool:
    if isinstance(value, float):
        return x is not None and abs(float(x) - value) <= 1e-9 * max(abs(value), abs(float(x)))
    return x == value
