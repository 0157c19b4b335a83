"""A task's declaration: where its rows come from and how a row becomes an `Example`.

Built-in tasks and user tasks are the same thing: a plain mapping (YAML file, dict or Hydra node) read
into a `TaskSpec`. Checks here need no data, so a bad spec fails before anything is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ift.tasks.formatters import FORMATTERS
from ift.tasks.rows import RowError, TaskError, get_field, render, template_fields  # noqa: F401 - re-exported


@dataclass
class TaskSpec:
    name: str
    template: str = ""                   # "{field}" placeholders filled from a row; "{{" for a literal brace
    label_words: list[str] | None = None  # classification: candidate i is " " + label_words[i]
    choices_field: str | None = None      # multiple choice: the (dotted) field holding each row's choices
    label_field: str = "label"            # the gold answer: an index, a digit string, or a key (see below)
    label_values: list | None = None      # raw gold values in candidate order, e.g. WinoGrande ["1", "2"]
    label_keys_field: str | None = None   # per-row list the gold is looked up in, e.g. OBQA "choices.label"
    choice_suffix: str = ""               # appended to every choice (OBQA: ".")
    formatter: str = "template"           # see ift/tasks/formatters.py: template, hellaswag, copa, winogrande
    eval_split: str = "validation"
    demo_split: str = "train"
    eval_limit: int | None = None         # evaluate a seeded subsample of this many rows (None: all)
    stratify: bool | None = None          # N per class; defaults to True exactly when label_words are given
    dev_size: int = 0                     # rows of the demo pool held out for choosing hyper-parameters
    demo_max_chars: int | None = None     # demonstrate only rows whose rendered text is at most this long (a
                                          # short attention window: IFT reads the demonstrations twice over)
    hub: dict | None = None               # {path, name, revision}: `datasets.load_dataset` arguments
    data_dir: str | None = None           # local root holding <dir>/<split>.{jsonl,parquet,csv}
    dir: str | None = None                # sub-directory of data_dir (default: name)
    description: str = ""
    base_dir: Path | None = field(default=None, repr=False)  # resolves a relative data_dir (the YAML's folder)

    def __post_init__(self):

        if not isinstance(self.name, str) or not self.name:
            raise TaskError(f"task name must be a non-empty string, got {self.name!r}")
        if self.formatter not in FORMATTERS:
            raise TaskError(f"{self.name}: unknown formatter {self.formatter!r}; choose from {sorted(FORMATTERS)}")
        FORMATTERS[self.formatter].check(self)
        if self.label_words is not None:
            self.label_words = [str(w) for w in self.label_words]
            if not self.label_words:
                raise TaskError(f"{self.name}: label_words is empty")
        if self.label_values is not None:
            self.label_values = list(self.label_values)
        if self.stratify is None:
            self.stratify = self.label_words is not None
        if self.stratify and self.label_words is None:
            raise TaskError(f"{self.name}: stratify needs label_words (classes); multiple-choice tasks draw N at random")
        if self.eval_limit is not None and (not isinstance(self.eval_limit, int) or self.eval_limit < 1):
            raise TaskError(f"{self.name}: eval_limit must be a positive integer or null, got {self.eval_limit!r}")
        if not isinstance(self.dev_size, int) or self.dev_size < 0:
            raise TaskError(f"{self.name}: dev_size must be an integer >= 0, got {self.dev_size!r}")
        if self.demo_max_chars is not None and (not isinstance(self.demo_max_chars, int) or self.demo_max_chars < 1):
            raise TaskError(f"{self.name}: demo_max_chars must be a positive integer or null, got {self.demo_max_chars!r}")
        if self.hub is not None and not (isinstance(self.hub, dict) and self.hub.get("path")):
            raise TaskError(f"{self.name}: hub must be a mapping with a 'path' (and optional 'name', 'revision')")
        if self.base_dir is not None:
            self.base_dir = Path(self.base_dir)

    @property
    def is_classification(self) -> bool:
        return self.label_words is not None

    @property
    def placeholders(self) -> list[str]:
        return template_fields(self.template, self.name)

    @classmethod
    def from_mapping(cls, data: dict, base_dir: Path | None = None) -> TaskSpec:
        known = {f.name for f in fields(cls)} - {"base_dir"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TaskError(f"task {data.get('name', '?')!r}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        if "name" not in data:
            raise TaskError(f"a task spec needs a 'name'; got keys {sorted(data)}")
        return cls(**data, base_dir=base_dir)
