"""A study's plan: the preset's named sweeps expanded into job overrides, in declared order.

A study preset (conf/experiment/study/<name>.yaml) selects the study sweeper (`override /hydra/sweeper: study`,
hydra_plugins/ift_study/study_sweeper.py) and declares, under `hydra.sweeper`:

    groups:   named task groups, each a mapping of overrides applied together (a task, its n_shot, rows, seeds,
              a per-task cap such as `++method.max_repeats: 3`); a value may be a sweep (`seed: range(0,40)`)
    sweeps:   a list of named sweeps, run in order; each `params` is a cartesian product in Hydra's override
              syntax, its first key varying slowest; the key `group` sweeps over named task groups

so a study whose tasks differ in settings or seeds is a few named products in YAML, not code. The sweeper hands
each named sweep to the launcher as one batch (split by `max_batch_size`): a later sweep (e.g. T = 15, continuing T = 8 runs) starts
after the earlier one ended, on the basic launcher, joblib's local processes or a SLURM job array alike.
The command line's overrides (`model=...`, `quant=...`, `dry_run=true`, even a sweep such as `seed=0,1`) apply
to every job and win over the study's; jobs that end up with the same overrides run once. `tasks` (a list)
keeps only those tasks' jobs: `hydra.sweeper.tasks=[sst2]`, and `arms` those arms' jobs, each in the sweep that
declares it (`hydra.sweeper.arms=[dev_demos29]`; an `arm=` on the command line instead would apply that arm to
every sweep's jobs).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

GROUP = "group"  # the params key that sweeps over named task groups


class StudyError(ValueError):
    """A study preset that cannot be expanded (an unknown group, a sweep without params)."""


def _plain(node) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _value(value) -> str:
    """A YAML value as Hydra override syntax: a list is a choice sweep, a bool lower-case, the rest as written."""
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _key(line: str) -> str:
    """What an override line sets (its key and package, without the +/++/~ prefix): the last one for a key
    wins. An override's key never holds `=`, so the text before the first one is the key."""
    return line.split("=", 1)[0].lstrip("~+")


def product(lines: Sequence[str], parser=None) -> list[list[str]]:
    """The cartesian product of overrides in Hydra's syntax (a choice or range sweeps), the first varying
    slowest; each job a list of `key=value` strings (a +/++ prefix kept)."""
    parser = parser or _parser()
    axes = []
    for override in parser.parse_overrides(list(lines)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise StudyError(f"{override.input_line}: a study sweeps choices and ranges only")
            axes.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            axes.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*axes)]


def settings(mapping: dict) -> list[str]:
    """A YAML mapping of settings as override lines."""
    return [f"{key}={_value(value)}" for key, value in mapping.items()]


def merge(*lists: Iterable[str]) -> list[str]:
    """Override lists joined, a later override of the same key replacing an earlier one in its place."""
    out: dict[str, str] = {}
    for overrides in lists:
        for line in overrides:
            out[_key(line)] = line
    return list(out.values())


def expand_sweep(sweep: dict, groups: dict, parser=None) -> list[list[str]]:
    """One named sweep's jobs in order: its params' product, a `group` value replaced by that group's own
    product of overrides in its place."""
    parser = parser or _parser()
    name = sweep.get("name", "?")
    params = sweep.get("params") or {}
    if not params:
        raise StudyError(f"sweep {name!r} has no params")
    axes: list[list[list[str]]] = []
    for key, value in params.items():
        if key == GROUP:
            names = [v.strip() for v in _value(value).split(",")]
            unknown = [g for g in names if g not in groups]
            if unknown:
                raise StudyError(f"sweep {name!r}: group(s) {unknown} not in the study's groups: {sorted(groups)}")
            axes.append([job for g in names for job in product(settings(groups[g]), parser)])
        else:
            axes.append(product(settings({key: value}), parser))
    return [merge(*parts) for parts in itertools.product(*axes)]


def value_of(job: Sequence[str], key: str) -> str | None:
    """The value a job's overrides give `key` (its last override of it), None if they give none."""
    found = None
    for line in job:
        if _key(line) == key:
            found = line.split("=", 1)[1]
    return found


KEEP = ("task", "arm")  # the keys a study can be narrowed by: hydra.sweeper.tasks / hydra.sweeper.arms


def plan(sweeps: Sequence[dict], groups: dict, arguments: Sequence[str] = (), tasks: Sequence[str] | None = None,
         arms: Sequence[str] | None = None) -> list[tuple[str, list[list[str]]]]:
    """[(sweep name, its jobs)] in declared order: every job's overrides with the command line's applied last
    (a sweep there multiplies every job), a job already planned earlier dropped; `tasks` / `arms` (if given)
    keep only those tasks' / arms' jobs, each of which the study must plan (a typo is an error, not an empty
    study)."""
    parser = _parser()
    user = product(arguments, parser) if arguments else [[]]
    keep = dict(zip(KEEP, (tasks, arms)))
    planned: dict[str, set] = {key: set() for key in KEEP}
    seen: set[tuple[str, ...]] = set()
    out = []
    for sweep in sweeps:
        jobs = []
        for job in expand_sweep(sweep, groups, parser):
            values = {key: value_of(job, key) for key in KEEP}
            for key, value in values.items():
                planned[key].add(value)
            if any(wanted is not None and values[key] not in wanted for key, wanted in keep.items()):
                continue
            for extra in user:
                final = merge(job, extra)
                ident = tuple(sorted(final))
                if ident not in seen:
                    seen.add(ident)
                    jobs.append(final)
        out.append((str(sweep.get("name", f"sweep{len(out)}")), jobs))
    for key, wanted in keep.items():
        unknown = [w for w in (wanted or []) if w not in planned[key]]
        if unknown:
            raise StudyError(f"hydra.sweeper.{key}s: {unknown} not in this study's plan; its {key}s: "
                             f"{sorted(v for v in planned[key] if v is not None)}")
    return out
