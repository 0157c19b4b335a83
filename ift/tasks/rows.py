"""Row helpers and task errors: the leaf module that both the spec (spec.py) and the formatters (formatters.py)
import, so neither imports the other's internals."""
from __future__ import annotations

import string


class TaskError(ValueError):
    """Bad task input (unknown task, missing column or split, impossible sampling request ...)."""


class RowError(TaskError):
    """A problem in one row's content. `Task` re-raises it as a TaskError naming the file, split and row."""


def template_fields(template: str, task: str = "?") -> list[str]:
    """The `{field}` names of a template, in order; format specs and conversions are not allowed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise TaskError(f"{task}: template {template!r} is malformed ({e}); write literal braces as {{{{ }}}}")
    names = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or spec or conv:
            raise TaskError(f"{task}: template placeholder {{{name}{'!' + conv if conv else ''}"
                            f"{':' + spec if spec else ''}}} must be a plain field name")
        names.append(name)
    return names


def render(template: str, row: dict) -> str:
    """Fill a template from a row (dotted names reach into nested fields); no str.format attribute magic."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(str(get_field(row, name)))
    return "".join(out)


def get_field(row: dict, path: str):
    """The value at a dotted path. A missing or null value is an error, never the text "None": JSON rows
    without a key, and null cells, reach us as None."""
    value = row
    for part in path.split("."):
        if value is None:
            break
        if not isinstance(value, dict) or part not in value:
            found = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise RowError(f"field {path!r} not found; fields there: {found}")
        value = value[part]
    if value is None:
        raise RowError(f"field {path!r} is missing or null")
    return value
