"""An ift `Task` built from an lm-evaluation-harness task config (its doc_to_text / doc_to_choice /
doc_to_target, splits and fewshot split), with its rows read from a local directory.

The harness renders every row; ift draws the demonstrations (its seeded, stratified sampler), the
evaluated subsample and the dev rows, so IFT can tune one demonstration set per seed exactly as for a
built-in task. Needs the optional `lmeval` extra (`pip install -e '.[lmeval]'`). See docs/lmeval.md.

    task = load_harness_task("sst2", data_dir="../shared/data")       # a harness task name ...
    task = load_harness_task("my_tasks/x.yaml", data_dir="data")       # ... or a harness task YAML
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
from pathlib import Path

from ift.example import Example
from ift.tasks.formatters import FORMATTERS, Formatter
from ift.tasks.sources import ENV_VAR, split_files
from ift.tasks.spec import TaskError, TaskSpec
from ift.tasks.task import Task

log = logging.getLogger(__name__)

SOURCE = "lmeval"  # a task mapping with `source: lmeval` is a harness task (conf/task/lmeval.yaml)
KEYS = ("name", "source", "include_path", "data_dir", "dir", "eval_split", "demo_split", "eval_limit", "dev_size")
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def _never(spec, row):
    raise TaskError(f"{spec.name}: a harness task renders its rows through lm-eval (HarnessTask.example)")


# rows are rendered by the harness: the spec only carries the splits, sampling options and the key
FORMATTERS.setdefault("lmeval", Formatter(lambda spec: None, lambda spec: {}, _never))


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise TaskError("lm-evaluation-harness is not installed: pip install -e '.[lmeval]' "
                        "(or pip install 'lm-eval>=0.4.13,<0.5')") from e


@functools.lru_cache(maxsize=4)
def _task_index(include_path: str | None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path).task_index  # indexes ~15k YAMLs: seconds, once


def harness_yaml(name_or_path: str, include_path: str | None = None) -> Path:
    """The YAML file of a harness task: a path as given, or the harness's index entry of a task name."""
    require_lm_eval()
    path = Path(str(name_or_path)).expanduser()
    if str(name_or_path).endswith((".yaml", ".yml")):
        if not path.is_file():
            raise TaskError(f"harness task file {path} does not exist")
        return path
    entry = _task_index(str(include_path) if include_path else None).get(str(name_or_path))
    if entry is None or entry.yaml_path is None:
        raise TaskError(f"unknown lm-eval task {name_or_path!r} (not a single YAML task in the harness"
                        + (f" or in {include_path}" if include_path else "")
                        + "); `lm_eval ls tasks` lists them, or give a path to a task YAML")
    return Path(entry.yaml_path)


def harness_config(name_or_path: str, include_path: str | None = None) -> dict:
    """The harness's own config of a task (includes and !function resolved), from its name or a YAML path."""
    from lm_eval.tasks._yaml_loader import load_yaml  # what TaskManager uses; lm-eval pinned <0.5

    path = harness_yaml(name_or_path, include_path)
    cfg = dict(load_yaml(path, resolve_func=True))
    if isinstance(cfg.get("task"), list) or "group" in cfg:
        raise TaskError(f"{name_or_path}: is a harness group; give one of its tasks")
    if cfg.get("output_type") != "multiple_choice":
        raise TaskError(f"{name_or_path}: output_type {cfg.get('output_type')!r}: ift scores multiple-choice "
                        f"tasks only (output_type: multiple_choice)")
    return cfg


def local_dataset_overrides(cfg: dict, folder: Path) -> dict:
    """Config overrides that read the task's splits from `folder/<split>.{jsonl,parquet,csv}` (hub column
    schema) instead of the hub; a configured split without a file is dropped (set to None)."""
    files = split_files(folder)
    if not files:
        raise TaskError(f"{cfg.get('task')}: no split files (<split>.jsonl, .parquet or .csv) in {folder}")
    formats = {p.suffix for p in files.values()}
    if len(formats) > 1:
        raise TaskError(f"{cfg.get('task')}: mixed split file formats in {folder}: {sorted(formats)}")
    from ift.tasks.sources import FORMATS

    out = {"dataset_path": FORMATS[formats.pop()], "dataset_name": None,
           "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()}}}
    for key in SPLIT_KEYS:
        if cfg.get(key) is not None and cfg[key] not in files:
            log.warning("%s: %s %r has no file in %s: not used", cfg.get("task"), key, cfg[key], folder)
            out[key] = None
    return out


def _describe(value) -> str | list | dict | None:
    """A config value as plain data for the store key: a function by its module, name and source."""
    if callable(value):
        try:
            source = inspect.getsource(value)
        except (OSError, TypeError):
            source = None
        return {"function": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}",
                "source": source}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    return value


class HarnessTask(Task):
    """A `Task` whose rows are rendered by an lm-eval `ConfigurableTask`; sampling is ift's (Task)."""

    def __init__(self, spec: TaskSpec, harness, data_dir):
        super().__init__(spec, data_dir)
        self.harness = harness
        cfg = harness.config
        self.target_delimiter = cfg.target_delimiter
        if cfg.fewshot_delimiter != "\n\n":
            raise TaskError(f"{spec.name}: fewshot_delimiter {cfg.fewshot_delimiter!r}: ift joins demonstrations "
                            f"with '\\n\\n' (docs/design.md); not supported")
        if cfg.description:
            raise TaskError(f"{spec.name}: the task has a description ({cfg.description!r}), which ift cannot put "
                            f"before its demonstrations yet; not supported")
        if getattr(harness, "multiple_target", 0):
            raise TaskError(f"{spec.name}: several gold answers per row (doc_to_target is a list): not supported")

    def split(self, role: str):
        name = getattr(self.spec, role)
        if name not in self._splits:
            if name not in self.harness.dataset:
                raise TaskError(f"{self.name}: split {name!r} ({role}) not found; splits: {list(self.harness.dataset)}")
            docs = self.harness.dataset[name]
            if self.harness.config.process_docs is not None:
                docs = self.harness.config.process_docs(docs)
            self._sources[name] = str(split_files(self.data_dir / (self.spec.dir or self.spec.name)).get(name))
            self._splits[name] = docs
            self._labels[name] = [self._label(docs[i], name, i) for i in range(len(docs))]
        return self._splits[name]

    def _label(self, doc: dict, split: str, index: int) -> int:
        """The gold candidate index, -1 when the row is unlabelled (a negative or out-of-range target)."""
        h = self.harness
        with self._locate(split, index):
            target = h.doc_to_text(doc) if h.multiple_input else h.doc_to_target(doc)
            choices = h.doc_to_choice(doc)
            if isinstance(target, str):
                target = choices.index(target) if target in choices else -1
            if not isinstance(target, int):
                raise TaskError(f"gold answer {target!r} is neither a choice index nor a choice")
            return target if 0 <= target < len(choices) else -1

    def example(self, role: str, index: int) -> Example:
        """Row `index` as the harness would ask it: (context, target_delimiter + choice) per candidate."""
        docs = self.split(role)
        doc, h, delim = docs[index], self.harness, self.target_delimiter
        choices = [str(c) for c in h.doc_to_choice(doc)]
        gold = self._labels[getattr(self.spec, role)][index]
        if h.multiple_input:  # e.g. WinoGrande: each choice fills the context, the target is scored
            target = h.doc_to_target(doc)
            target = choices[target] if isinstance(target, int) else str(target)
            return Example(tuple(choices), (delim + target,) * len(choices), gold, index)
        return Example.shared(str(h.doc_to_text(doc)), [delim + c for c in choices], gold, index)

    def choices(self, role: str, index: int) -> list[str]:
        """doc_to_choice of a row: the harness's acc_norm divides by these lengths (not the delimiter's)."""
        return [str(c) for c in self.harness.doc_to_choice(self.split(role)[index])]


def load_harness_task(name_or_path: str, data_dir=None, *, include_path: str | None = None, dir: str | None = None,
                      eval_split: str | None = None, demo_split: str | None = None, eval_limit: int | None = None,
                      dev_size: int = 0) -> HarnessTask:
    """An lm-eval task as an ift `Task`, rows from `<data_dir>/<dir or task name>/<split>.jsonl` (data_dir:
    the argument, else $IFT_DATA_DIR; the hub is never used here). Splits default to the harness's: the
    evaluated one is its test_split if it has one, else its validation_split; demonstrations come from its
    fewshot_split, else training_split, else validation_split."""
    from lm_eval.api.task import ConfigurableTask

    cfg = harness_config(name_or_path, include_path)
    name = str(cfg["task"])
    if data_dir is None:
        import os

        data_dir = os.environ.get(ENV_VAR)
    if data_dir is None:
        raise TaskError(f"{name}: a harness task reads local data: give data_dir (task.data_dir) or set ${ENV_VAR}")
    data_dir = Path(data_dir).expanduser()
    cfg.update(local_dataset_overrides(cfg, data_dir / (dir or name)))
    cfg.pop("tag", None)
    cfg.pop("group", None)
    harness = ConfigurableTask(config=cfg)
    c = harness.config
    eval_split = eval_split or c.test_split or c.validation_split
    demo_split = demo_split or c.fewshot_split or c.training_split or c.validation_split
    constant = c.doc_to_choice if isinstance(c.doc_to_choice, list) else None
    key = {k: _describe(getattr(c, k)) for k in ("doc_to_text", "doc_to_choice", "doc_to_target", "process_docs",
                                                  "target_delimiter", "fewshot_delimiter", "description")}
    spec = TaskSpec(name=name, formatter="lmeval", template=json.dumps(key, sort_keys=True),
                    label_words=[str(w) for w in constant] if constant else None, eval_split=eval_split,
                    demo_split=demo_split, eval_limit=eval_limit, dev_size=dev_size, data_dir=str(data_dir), dir=dir,
                    description=f"lm-eval task {name} ({harness_yaml(name_or_path, include_path)})")
    task = HarnessTask(spec, harness, data_dir)
    task.split("eval_split")
    return task


def load_from_mapping(node: dict, data_dir=None) -> HarnessTask:
    """A `source: lmeval` task mapping (conf/task/lmeval.yaml): unknown keys fail, naming the valid ones."""
    unknown = sorted(set(node) - set(KEYS))
    if unknown:
        raise TaskError(f"lm-eval task {node.get('name')!r}: unknown key(s) {unknown}; valid keys: {list(KEYS)}")
    if not node.get("name"):
        raise TaskError("an lm-eval task needs a name: task.name=<harness task> (e.g. sst2, copa, openbookqa)")
    kwargs = {k: node[k] for k in KEYS[2:] if node.get(k) is not None}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    return load_harness_task(node["name"], **kwargs)
