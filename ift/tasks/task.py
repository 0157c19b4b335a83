"""A loaded task: its splits, and the seeded evaluation subsample, demonstrations and dev set.

The demonstration pool is the demo split's labelled rows (minus the evaluated rows when the demo split is
the evaluation split). One seeded permutation of the pool orders everything: demonstrations are taken from
its head (per class when stratified), the dev set is its last `dev_size` rows, so the two never meet.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ift.example import SEPARATOR, Example
from ift.tasks import sampling
from ift.tasks.formatters import FORMATTERS
from ift.tasks.sources import load_split, resolve_data_dir, split_source
from ift.tasks.spec import RowError, TaskError, TaskSpec, get_field

log = logging.getLogger(__name__)

_UNLABELLED = (None, "", -1, "-1")  # None (a missing or null label) is an error in any row that is used


@dataclass(frozen=True)
class Demonstrations:
    """Exactly what the model reads before each query, and where it came from (for the results store)."""

    text: str          # "\n\n".join(demonstrations) + "\n\n" ("" for zero-shot)
    indices: list[int]  # row numbers in `split`, in the order they appear in `text`
    split: str


class Task:
    def __init__(self, spec: TaskSpec, data_dir=None):
        self.spec = spec
        self.data_dir = resolve_data_dir(spec, data_dir)
        self._formatter = FORMATTERS[spec.formatter]
        self._splits: dict[str, object] = {}
        self._labels: dict[str, list] = {}
        self._sources: dict[str, str] = {}

    def __repr__(self) -> str:
        source = self.data_dir or (self.spec.hub or {}).get("path")
        return f"Task({self.name!r}, eval={self.spec.eval_split}, demo={self.spec.demo_split}, source={source})"

    @property
    def name(self) -> str:
        return self.spec.name

    # --- data ---------------------------------------------------------------------------------

    def split(self, role: str):
        """The `datasets.Dataset` of `role` ("eval_split" or "demo_split"), loaded and checked once."""
        name = getattr(self.spec, role)
        if name not in self._splits:
            ds = load_split(self.spec, name, role, self.data_dir)
            self._sources[name] = split_source(self.spec, name, self.data_dir)
            self._check_columns(ds, name)
            self._labels[name] = self._check_labels(ds, name)
            self._splits[name] = ds
        return self._splits[name]

    def _check_columns(self, ds, split: str) -> None:
        """Every field the spec reads exists in the split's schema (null cells are caught per row, when used)."""
        for path, why in self._formatter.columns(self.spec).items():
            if not _has_field(ds.features, path):
                what = f"template placeholder {{{path}}} has no matching field" if why == "template" \
                    else f"column {path!r} (from {why}) is missing"
                raise TaskError(f"{self.name}: {what} in split {split!r}; columns found: {ds.column_names}") from None

    def _check_labels(self, ds, split: str) -> list:
        """Raw labels (a plain list: indexing a `datasets` column row by row costs ~0.1 ms per row, seconds per
        job on a large split); for classification every labelled one must name a label word."""
        raw = list(ds[self.spec.label_field][:])
        if self.spec.is_classification:
            for i, value in enumerate(raw):
                if value is not None:  # a null label is an error only in a row that is used (see example)
                    with self._locate(split, i):
                        self._gold(value, None, len(self.spec.label_words))
        return raw

    def _locate(self, split: str, index: int) -> _Locate:
        return _Locate(f"{self.name}: row {index} of split {split!r} in {self._sources.get(split, '?')}")

    def _gold(self, raw, row, n_candidates: int) -> int:
        spec = self.spec
        if raw is None:
            raise RowError(f"field {spec.label_field!r} (label_field) is missing or null")
        if raw in _UNLABELLED:
            return -1
        if spec.label_keys_field:
            keys = list(get_field(row, spec.label_keys_field))
            if raw not in keys:
                raise RowError(f"{spec.label_field}={raw!r} is not one of {spec.label_keys_field}={keys}")
            gold = keys.index(raw)
        elif spec.label_values is not None:
            if raw not in spec.label_values:
                raise RowError(f"{spec.label_field}={raw!r} is not one of label_values={spec.label_values}")
            gold = spec.label_values.index(raw)
        elif isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
            gold = int(raw)
        else:
            raise RowError(f"{spec.label_field}={raw!r} is not an index; map it with label_values "
                           f"or label_keys_field")
        if not 0 <= gold < n_candidates:
            words = spec.label_words if spec.is_classification else f"{n_candidates} choices"
            raise RowError(f"{spec.label_field}={raw!r} is outside the label words {words} "
                           f"(valid: 0..{n_candidates - 1})")
        return gold

    def example(self, role: str, index: int) -> Example:
        """Row `index` of the `role` split as an `Example` (gold -1 when the row is unlabelled).

        Every row that is evaluated, demonstrated or used for dev passes here, so a missing or null field in
        any of them fails (naming the file, split, row and field) before a model does any work."""
        ds = self.split(role)
        row = ds[index]
        with self._locate(getattr(self.spec, role), index):
            contexts, conts = self._formatter.render(self.spec, row)
            gold = self._gold(row.get(self.spec.label_field), row, len(conts))
        return Example(tuple(contexts), tuple(conts), gold, index)

    def render_example(self, row: dict) -> Example:
        """An unlabelled example rendered from a made-up row (contextual calibration's content-free inputs)."""
        contexts, conts = self._formatter.render(self.spec, row)
        return Example(tuple(contexts), tuple(conts))

    # --- evaluation ---------------------------------------------------------------------------

    @property
    def _shared_split(self) -> bool:
        return self.spec.eval_split == self.spec.demo_split

    def eval_indices(self, seed: int = 0, limit: int | None = None) -> list[int]:
        limit = self.spec.eval_limit if limit is None else limit
        return sampling.subsample(len(self.split("eval_split")), limit, seed)

    def eval_examples(self, seed: int = 0, limit: int | None = None) -> list[Example]:
        """The evaluated rows in source order: all, or a seeded subsample of `limit` (default: eval_limit)."""
        if limit is not None and limit != self.spec.eval_limit and self._shared_split:
            raise TaskError(f"{self.name}: demonstrations come from the evaluation split {self.spec.eval_split!r}, "
                            f"so the evaluated subsample is fixed by eval_limit ({self.spec.eval_limit}); "
                            f"set task.eval_limit={limit} instead of passing limit")
        return [self.example("eval_split", i) for i in self.eval_indices(seed, limit)]

    # --- demonstrations and dev ---------------------------------------------------------------

    def _pool(self, seed: int) -> list[int]:
        """Sorted labelled rows of the demo split that are never evaluated."""
        self.split("demo_split")
        labels = self._labels[self.spec.demo_split]
        pool = [i for i, raw in enumerate(labels) if raw not in _UNLABELLED]
        if self._shared_split:
            evaluated = self.eval_indices(seed)
            taken = [False] * len(labels)
            for i in evaluated:
                taken[i] = True
            pool = [i for i in pool if not taken[i]]
            log.warning("%s: demonstrations and dev rows come from %r, the evaluation split: drawing only from "
                        "the %d rows not among the %d evaluated (seed %d)",
                        self.name, self.spec.demo_split, len(pool), len(evaluated), seed)
        if not pool:
            raise TaskError(f"{self.name}: no labelled rows left for demonstrations in split {self.spec.demo_split!r}"
                            + ("; lower task.eval_limit" if self._shared_split else ""))
        return pool

    def _order(self, seed: int) -> tuple[list[int], list[int]]:
        """(candidates for demonstrations, dev rows): one permutation of the pool, split at dev_size."""
        order = sampling.permute(self._pool(seed), seed, sampling.POOL)
        cut = len(order) - self.spec.dev_size
        if cut < 1:
            raise TaskError(f"{self.name}: dev_size={self.spec.dev_size} leaves no rows for demonstrations "
                            f"(pool: {len(order)} rows of {self.spec.demo_split!r}); lower task.dev_size")
        return order[:cut], order[cut:]

    def demonstrations(self, n: int, seed: int = 0, draw: int = 0) -> Demonstrations:
        """n per class (stratified classification) or n in all, shuffled; the text ends with the separator.

        draw k >= 1 takes them from another order of the same candidates (ift.controls: demonstrations chosen on
        dev), so no draw ever holds a dev or evaluated row; draw 0 is the job's own."""
        if not isinstance(n, int) or n < 0:
            raise TaskError(f"{self.name}: n (shots) must be an integer >= 0, got {n!r}")
        if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
            raise TaskError(f"{self.name}: draw must be an integer >= 0, got {draw!r}")
        split = self.spec.demo_split
        if n == 0:
            return Demonstrations("", [], split)
        candidates, _ = self._order(seed)
        if draw:
            candidates = sampling.redraw(candidates, seed, draw)
        if self.spec.demo_max_chars is not None:
            candidates = self._short_enough(candidates, n)
        if self.spec.stratify:
            labels = self._labels[split]
            n_classes = len(self.spec.label_words)
            classes = {i: self._gold(labels[i], None, n_classes) for i in candidates}
            picked = sampling.first_per_class(candidates, classes, n, n_classes)
            for word, rows in zip(self.spec.label_words, picked):
                if len(rows) < n:
                    raise TaskError(f"{self.name}: {n} demonstrations per class asked, but label {word!r} has only "
                                    f"{len(rows)} rows available in split {split!r} (after dev_size="
                                    f"{self.spec.dev_size} held out); lower n")
            indices = sampling.permute([i for rows in picked for i in rows], seed, sampling.SHUFFLE)
        else:
            if n > len(candidates):
                raise TaskError(f"{self.name}: {n} demonstrations asked, but split {split!r} has only "
                                f"{len(candidates)} rows available (after dev_size={self.spec.dev_size} held out)")
            indices = candidates[:n]
        texts = [self.example("demo_split", i).demonstration for i in indices]
        return Demonstrations(SEPARATOR.join(texts) + SEPARATOR, indices, split)

    def _short_enough(self, candidates: list[int], n: int) -> list[int]:
        """The candidates, in order, whose demonstration fits demo_max_chars, walked only until the draw is met.

        Skipping the long rows keeps every short row's place, so a limit no row exceeds draws what no limit
        does, and the dev and evaluation rows never change.
        """
        limit, kept = self.spec.demo_max_chars, []
        n_classes = len(self.spec.label_words) if self.spec.stratify else 1
        per_class = [0] * n_classes
        labels = self._labels[self.spec.demo_split]
        for i in candidates:
            if len(self.example("demo_split", i).demonstration) > limit:
                continue
            kept.append(i)
            per_class[self._gold(labels[i], None, n_classes) if self.spec.stratify else 0] += 1
            if min(per_class) >= n:
                return kept
        raise TaskError(f"{self.name}: {n} demonstrations{' per class' if self.spec.stratify else ''} asked, but "
                        f"only {per_class} rows of split {self.spec.demo_split!r} fit task.demo_max_chars={limit}; "
                        f"raise task.demo_max_chars or lower n")

    def dev_examples(self, size: int | None = None, seed: int = 0) -> list[Example]:
        """A held-out dev set from the demo pool (source order), never among the same seed's demonstrations."""
        size = self.spec.dev_size if size is None else size
        if size > self.spec.dev_size:
            raise TaskError(f"{self.name}: dev set of {size} asked but only dev_size={self.spec.dev_size} rows are "
                            f"held out; set task.dev_size={size}")
        _, dev = self._order(seed)
        return [self.example("demo_split", i) for i in sorted(dev[:size])]


class _Locate:
    """Turns a RowError raised inside the block into a TaskError that says where the row is."""

    def __init__(self, where: str):
        self.where = where

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, RowError):
            raise TaskError(f"{self.where}: {err}") from None
        return False


def _has_field(features, path: str) -> bool:
    """Whether a dotted path exists in a `datasets.Features` schema (nested structs are dicts; a list of
    structs is a Sequence/List whose `.feature` is the struct)."""
    node = features
    for part in path.split("."):
        while not isinstance(node, dict) and isinstance(getattr(node, "feature", None), dict):
            node = node.feature
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
