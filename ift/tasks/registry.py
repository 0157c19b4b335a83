"""Finding a task: a built-in name, a YAML file, or a mapping (a Hydra `task` node, a dict).

A mapping whose `name` is a built-in task overrides that task's spec with its other keys (so a Hydra
`task` node can be just `name: sst2` plus run options); any other mapping is a complete user task.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from ift.tasks.spec import TaskError, TaskSpec
from ift.tasks.task import Task

SPEC_DIR = Path(__file__).parent / "specs"


def list_tasks() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file must be a YAML mapping, got {type(data).__name__}")
    return data


def builtin_spec(name: str) -> dict:
    if name not in list_tasks():
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())} "
                        f"(or give a path to a task YAML file)")
    return _read_yaml(SPEC_DIR / f"{name}.yaml")


def resolve_spec(name_or_spec, overrides: dict | None = None) -> TaskSpec:
    overrides = _anchor(dict(overrides or {}), Path.cwd())
    if isinstance(name_or_spec, TaskSpec):
        data, base_dir = _spec_dict(name_or_spec), name_or_spec.base_dir
    elif isinstance(name_or_spec, (str, Path)):
        text = str(name_or_spec)
        if text in list_tasks():
            data, base_dir = builtin_spec(text), SPEC_DIR
        elif text.endswith((".yaml", ".yml")) or Path(text).is_file():
            path = Path(text).expanduser()
            if not path.is_file():
                raise TaskError(f"task file {path} does not exist")
            data, base_dir = _over_builtin(_read_yaml(path), path.parent.resolve())
        else:
            builtin_spec(text)  # raises: unknown task, listing the known ones
    elif hasattr(name_or_spec, "items"):
        data, base_dir = _over_builtin(_to_dict(name_or_spec), Path.cwd())
        if base_dir != SPEC_DIR and "template" not in data and "formatter" not in data:
            raise TaskError(f"unknown task {data.get('name')!r}; known tasks: {', '.join(list_tasks())}. "
                            f"A user task needs at least a name, a template and label_words or choices_field")
    else:
        raise TaskError(f"a task is a name, a YAML path or a mapping, got {type(name_or_spec).__name__}")
    return TaskSpec.from_mapping({**data, **overrides}, base_dir)


def _anchor(data: dict, base_dir: Path) -> dict:
    """Drop an unset data_dir (it must not hide the spec's own) and make a relative one absolute."""
    if "data_dir" in data:
        if data["data_dir"] is None:
            del data["data_dir"]
        else:
            data["data_dir"] = str(base_dir / Path(data["data_dir"]).expanduser())
    return data


def _over_builtin(data: dict, base_dir: Path) -> tuple[dict, Path]:
    """A mapping named like a built-in overrides it (a Hydra task node); otherwise it is a whole task."""
    if data.get("name") in list_tasks():
        return {**builtin_spec(data["name"]), **_anchor(data, base_dir)}, SPEC_DIR
    return data, base_dir


def _to_dict(node) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:
        pass
    return dict(node)


def _spec_dict(spec: TaskSpec) -> dict:
    data = asdict(spec)
    data.pop("base_dir")
    return data


def load_task(name_or_spec, data_dir=None, **overrides) -> Task:
    """Build a task and load (and check) its evaluation split, so bad input fails before any model loads.

    name_or_spec: a built-in name (`list_tasks()`), a path to a task YAML file, a mapping (dict or Hydra
    node; `source: lmeval` makes it an lm-evaluation-harness task, ift/tasks/harness.py) or a `TaskSpec`. data_dir: local data root (else the spec's, else $IFT_DATA_DIR, else the hub).
    overrides: spec keys, e.g. eval_limit=500, demo_split="test".
    """
    if hasattr(name_or_spec, "items") and _to_dict(name_or_spec).get("source") == "lmeval":
        from ift.tasks.harness import load_from_mapping  # an lm-eval task (conf/task/lmeval.yaml)

        return load_from_mapping({**_to_dict(name_or_spec), **overrides}, data_dir)
    spec = resolve_spec(name_or_spec, overrides)
    task = Task(spec, data_dir)
    task.split("eval_split")
    return task
