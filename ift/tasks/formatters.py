"""Named row -> candidates functions (lm-eval-harness's `process_docs`, kept to the few special cases).

A formatter turns one row into parallel lists of contexts and continuations; the gold index is
computed elsewhere (`Task`) from `label_field`. A spec names its formatter with `formatter: <name>`.
Row problems raise `RowError` (no location); `Task.example` adds the file, split and row number.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ift.tasks.rows import RowError, TaskError, get_field, render


class TaskSpec(Protocol):
    """The fields of a task spec (ift.tasks.spec.TaskSpec, which imports this module) that formatters read."""

    name: str
    template: str
    label_words: list[str] | None
    choices_field: str | None
    label_field: str
    label_keys_field: str | None
    choice_suffix: str
    formatter: str

    @property
    def placeholders(self) -> list[str]: ...


@dataclass(frozen=True)
class Formatter:
    check: Callable[[TaskSpec], None]                          # spec-level checks, no data needed
    columns: Callable[[TaskSpec], dict[str, str]]              # field path -> which spec key needs it
    render: Callable[[TaskSpec, dict], tuple[list[str], list[str]]]


FORMATTERS: dict[str, Formatter] = {}


def _label_columns(spec: TaskSpec) -> dict[str, str]:
    cols = {spec.label_field: "label_field"}
    if spec.label_keys_field:
        cols[spec.label_keys_field] = "label_keys_field"
    return cols


# --- template: classification (label_words) or multiple choice (choices_field) -----------------

def _check_template(spec: TaskSpec) -> None:
    if not spec.template:
        raise TaskError(f"{spec.name}: a template is required (e.g. \"Review: {{text}}\\nSentiment:\")")
    spec.placeholders  # parses, raising on malformed templates
    if (spec.label_words is None) == (spec.choices_field is None):
        raise TaskError(f"{spec.name}: give exactly one of label_words (fixed classes) or choices_field "
                        f"(per-example choices)")


def _template_columns(spec: TaskSpec) -> dict[str, str]:
    cols = {name: "template" for name in spec.placeholders}
    if spec.choices_field:
        cols[spec.choices_field] = "choices_field"
    return {**cols, **_label_columns(spec)}


def _template_render(spec: TaskSpec, row: dict) -> tuple[list[str], list[str]]:
    context = render(spec.template, row)
    if spec.label_words is not None:
        choices = spec.label_words
    else:
        choices = get_field(row, spec.choices_field)
        if isinstance(choices, str) or not hasattr(choices, "__len__"):
            raise RowError(f"choices_field {spec.choices_field!r} must hold a list, got {choices!r}")
        if any(c is None for c in choices):
            raise RowError(f"field {spec.choices_field!r} holds a null choice: {list(choices)!r}")
    conts = [" " + str(c) + spec.choice_suffix for c in choices]
    return [context] * len(conts), conts


FORMATTERS["template"] = Formatter(_check_template, _template_columns, _template_render)


# --- hellaswag: the template formatter plus the usual WikiHow/ActivityNet cleanup ----------------

def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: drop [header]/[step] tags, ' [title]' ends a sentence."""
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def _hellaswag_render(spec: TaskSpec, row: dict) -> tuple[list[str], list[str]]:
    contexts, conts = _template_render(spec, row)
    return [hellaswag_clean(c) for c in contexts], [" " + hellaswag_clean(c) for c in conts]


FORMATTERS["hellaswag"] = Formatter(_check_template, _template_columns, _hellaswag_render)


# --- copa: "{premise minus its final period} because/therefore {choice}" ----------------------

def _no_template(spec: TaskSpec) -> None:
    if spec.template or spec.label_words or spec.choices_field:
        raise TaskError(f"{spec.name}: formatter {spec.formatter!r} builds its own text; remove template, "
                        f"label_words and choices_field")


def _lower_first(text: str) -> str:
    """The choice continues the premise's sentence: 'It was fragile.' -> 'it was fragile.' (keeps 'I ...')."""
    if text[:2] in ("I ", "I'") or text[1:2].isupper():
        return text
    return text[:1].lower() + text[1:]


def _copa_render(spec: TaskSpec, row: dict) -> tuple[list[str], list[str]]:
    question = get_field(row, "question")
    connective = {"cause": "because", "effect": "therefore"}.get(question)
    if connective is None:
        raise RowError(f"question must be 'cause' or 'effect', got {question!r}")
    premise = str(get_field(row, "premise")).strip()
    premise = premise[:-1] if premise.endswith(".") else premise
    context = f"{premise} {connective}"
    conts = [" " + _lower_first(str(get_field(row, c)).strip()) for c in ("choice1", "choice2")]
    return [context, context], conts


FORMATTERS["copa"] = Formatter(
    _no_template,
    lambda spec: {**{c: "formatter copa" for c in ("premise", "choice1", "choice2", "question")}, **_label_columns(spec)},
    _copa_render,
)


# --- winogrande: each option fills the blank; the shared rest of the sentence is scored ---------

def _winogrande_render(spec: TaskSpec, row: dict) -> tuple[list[str], list[str]]:
    sentence = str(get_field(row, "sentence"))
    if sentence.count("_") != 1:
        raise RowError(f"sentence must contain exactly one '_' blank, got {sentence!r}")
    head, tail = sentence.split("_")
    contexts = [head + str(get_field(row, "option1")), head + str(get_field(row, "option2"))]
    rest = " " + tail.strip()
    return contexts, [rest, rest]


FORMATTERS["winogrande"] = Formatter(
    _no_template,
    lambda spec: {**{c: "formatter winogrande" for c in ("sentence", "option1", "option2")}, **_label_columns(spec)},
    _winogrande_render,
)
