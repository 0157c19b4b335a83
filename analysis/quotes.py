"""Numbers in prose quoted from a results page, kept true to the page.

A page rebuilt with more seeds changes its numbers; prose that still quotes the old ones is a stale result
that nothing else catches. So a quoted number names its cell. The raw markdown stays readable: the number is
written plainly as a reference-style link, and the link's definition (at the end of the section) holds the
cell's address as its title:

    On SST-2 IFT gains [+6.6 ± 4.5][gemma-sst2-ift] over [26][gemma-sst2-seeds] seeds.

    [gemma-sst2-ift]: results/gemma/study.md "By task | sst2 | IFT (mode, η, β, T on dev)"
    [gemma-sst2-seeds]: results/gemma/study.md "By task | sst2 | seeds"

Rendered, the number links to its page (the title shows the cell). One definition serves every use of its
name. The address is `PAGE "SECTION | ROW | COLUMN [| PICK]"`: PAGE relative to the quoting document; SECTION
a heading of the page (or its unique prefix); ROW the row's label cells (its first three, less numbers and
blanks) joined by " / "; COLUMN a header (or its unique prefix). The number is the cell's first `x ± y` or
plain number; PICK takes another: `2` the cell's second number, `count>=6` / `count>8` how many of a list of
steps are at least 6 / above 8, `len` how many entries the list has. The older form, the address in an HTML
comment right before the number (`<!-- PAGE | SECTION | ROW | COLUMN -->+6.6 ± 4.5`), is still checked, and
`convert` rewrites it into the readable one.

    python -m analysis.quotes check docs/results.md README.md    # exit 1 on any quote that differs
    python -m analysis.quotes update docs/results.md README.md   # rewrite them; lists each change with
                                                                 # the cell's verdict (▲ / ▼, the row's
                                                                 # verdict column) for the words around it,
                                                                 # and flags a difference whose interval
                                                                 # crossed zero (significant <-> not)
    python -m analysis.quotes convert docs/results.md            # comment quotes -> reference-style ones
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

QUOTE = re.compile(r"<!--\s*(.*?)\s*-->([-+−]?\d+(?:\.\d+)?(?: ± \d+(?:\.\d+)?)?)")
NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?: ± \d+(?:\.\d+)?)?")
ADDRESS = re.compile(r"<!--\s*[^|>\n]*\.md\s*\|.*?-->")  # a comment that names a page cell, quoted or not
CELL_SEP = re.compile(r"(?<!\\)\|")
PICK = re.compile(r"^(?:(\d+)|count(>=|>)(\d+)|len)$")
NUM = r"[-+−]?\d+(?:\.\d+)?(?: ± \d+(?:\.\d+)?)?"
REF_USE = re.compile(r"\[(" + NUM + r")\]\[([^\]\s]+)\]")  # [+6.6 ± 4.5][name]
REF_DEF = re.compile(r'^\[([^\]\s]+)\]:[ \t]*(\S+)(?:[ \t]+"(.*)")?[ \t]*$', re.M)  # [name]: page.md "address"
FENCE = re.compile(r"^(```|~~~)")


class QuoteError(ValueError):
    """A quote whose address names no cell."""


def _is_label(cell: str) -> bool:
    return bool(cell) and not NUMBER.fullmatch(cell.replace("▲", "").replace("▼", "").strip())


def parse_page(text: str) -> dict[str, list[tuple[list[str], list[str]]]]:
    """{section heading: [(header, row), ...]} for every markdown table of a page."""
    sections: dict[str, list[tuple[list[str], list[str]]]] = {}
    section, header = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            section, header = line.lstrip("#").strip(), None
            sections.setdefault(section, [])
            continue
        if not line.startswith("|"):
            header = None
            continue
        # a cell's own "|" is escaped (a header such as `mean \|cos\|`): split on the others only
        cells = [c.strip().replace("\\|", "|") for c in CELL_SEP.split(line.strip().strip("|"))]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            sections.setdefault(section, []).append((header, cells))
    return sections


def row_label(cells: list[str]) -> str:
    return " / ".join(c for c in cells[:3] if _is_label(c))


def _unique(name: str, what: str, choices: list[str]) -> str:
    if name in choices:
        return name
    hits = [c for c in choices if c.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    shown = "; ".join(dict.fromkeys(choices))
    raise QuoteError(f"{what} {name!r} {'is ambiguous' if hits else 'not found'}; choices: {shown}")


def _row(sections: dict, section: str, row: str) -> tuple[list[str], list[str]]:
    section = _unique(section, "section", list(sections))
    rows = sections[section]
    matching = [(h, c) for h, c in rows if row_label(c) == row]
    if not matching:
        raise QuoteError(f"row {row!r} not found in section {section!r}; rows: "
                         + "; ".join(dict.fromkeys(row_label(c) for _, c in rows)))
    return matching[0]


def _in_column(row: tuple[list[str], list[str]], column: str) -> str:
    header, cells = row
    return cells[header.index(_unique(column, "column", header))]


def cell(sections: dict, section: str, row: str, column: str) -> str:
    """The text of one cell, by section, row label and column; a clear error naming the choices."""
    return _in_column(_row(sections, section, row), column)


def _row_verdict(row: tuple[list[str], list[str]]) -> str:
    """The row's own `verdict` column (better / worse / no difference), where its table has one."""
    header, cells = row
    return cells[header.index("verdict")] if "verdict" in header else ""


def pick(text: str, how: str | None) -> str:
    """The quoted number of a cell: its first number, or what PICK asks for."""
    if how is None:
        how = "1"
    m = PICK.match(how)
    if not m:
        raise QuoteError(f"pick {how!r}: expected a position (1, 2, ...), count>=N, count>N or len")
    if how == "len":
        return str(len([s for s in text.split(",") if s.strip()]))
    if m.group(2):
        steps = [int(s) for s in text.split(",") if s.strip()]
        bound = int(m.group(3))
        return str(sum(s >= bound if m.group(2) == ">=" else s > bound for s in steps))
    numbers = NUMBER.findall(text)
    if len(numbers) < int(m.group(1)):
        raise QuoteError(f"cell {text!r} has no number {m.group(1)}")
    return numbers[int(m.group(1)) - 1]


def _same(a: str, b: str) -> bool:
    return a.replace("−", "-") == b.replace("−", "-")


def _typeset(number: str) -> str:
    return "−" + number[1:] if number.startswith("-") else number


def _verdict(text: str) -> str:
    return "▲" if "▲" in text else "▼" if "▼" in text else ""


SIGNED_INTERVAL = re.compile(r"^([-+−]\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?)$")


def side_of_zero(number: str) -> str:
    """Where a signed difference's printed interval lies: "lies above 0", "lies below 0", "includes 0"; "" for a number
    that is no signed `x ± y` (an accuracy, a count). From the rounded text, so an interval that touches 0
    after rounding reads "includes 0"."""
    m = SIGNED_INTERVAL.match(number.strip())
    if not m:
        return ""
    mean, half = float(m.group(1).replace("−", "-")), float(m.group(2))
    return "lies above 0" if mean - half > 0 else "lies below 0" if mean + half < 0 else "includes 0"


@dataclass
class Quote:
    doc: Path
    line: int
    address: str
    quoted: str
    current: str
    verdict: str = ""  # the cell's ▲ / ▼ and its row's verdict column, if any: prose around a changed number
                       # may need a new verdict
    name: str = ""     # the reference name of a reference-style quote ("" for a comment quote)

    @property
    def is_stale(self) -> bool:
        return not _same(self.quoted, self.current)

    @property
    def crossed_zero(self) -> bool:
        """A quoted difference whose interval moved across 0 (significant ↔ not, or flipped sign): the words
        around it ("better", "significant", "no difference") are now wrong."""
        old, new = side_of_zero(self.quoted), side_of_zero(self.current)
        return bool(old and new and old != new)


def quotes(doc: Path, pages: dict | None = None) -> list[Quote]:
    """Every quote of a document with the page's current value (pages: a cache of parsed pages)."""
    pages = {} if pages is None else pages
    found = []
    text = doc.read_text()
    starts = {m.start() for m in QUOTE.finditer(text)}
    for m in ADDRESS.finditer(text):
        if m.start() not in starts:  # a space or a word before the number: the quote would go unchecked
            line = text.count("\n", 0, m.start()) + 1
            raise QuoteError(f"{doc}:{line}: {m.group(0)!r} is not followed directly by the number it quotes")
    for m in QUOTE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        value, verdict = _look_up(doc, line, _parts(m.group(1)), pages)
        found.append(Quote(doc, line, m.group(1), m.group(2), value, verdict))
    definitions = _definitions(doc, text)
    for m in REF_USE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        name = m.group(2)
        if name not in definitions:
            raise QuoteError(f"{doc}:{line}: [{m.group(1)}][{name}] names no definition `[{name}]: PAGE \"ADDRESS\"`")
        page_path, address = definitions[name]
        value, verdict = _look_up(doc, line, [page_path, *_parts(address)], pages)
        found.append(Quote(doc, line, f"{page_path} | {address}", m.group(1), value, verdict, name))
    return sorted(found, key=lambda q: q.line)


def _parts(address: str) -> list[str]:
    return [p.strip().replace("\\|", "|") for p in CELL_SEP.split(address)]


def _definitions(doc: Path, text: str) -> dict[str, tuple[str, str]]:
    """{name: (page, address)} of the link definitions that point at a page cell (a .md target with a title);
    a name defined twice is an error (markdown would silently use the first)."""
    out: dict[str, tuple[str, str]] = {}
    for m in REF_DEF.finditer(text):
        name, target, title = m.groups()
        if not target.endswith(".md") or title is None:
            continue
        if name in out:
            line = text.count("\n", 0, m.start()) + 1
            raise QuoteError(f"{doc}:{line}: [{name}] is defined twice")
        out[name] = (target, title)
    return out


def _look_up(doc: Path, line: int, parts: list[str], pages: dict) -> tuple[str, str]:
    """(the cell's current number, its verdict) for an address split into PAGE, SECTION, ROW, COLUMN[, PICK]."""
    if len(parts) not in (4, 5):
        raise QuoteError(f"{doc}:{line}: quote address {' | '.join(parts)!r} is not PAGE | SECTION | ROW | COLUMN [| PICK]")
    page = (doc.parent / parts[0]).resolve()
    if page not in pages:
        if not page.exists():
            raise QuoteError(f"{doc}:{line}: page {parts[0]} does not exist")
        pages[page] = parse_page(page.read_text())
    try:
        row = _row(pages[page], *parts[1:3])
        text_cell = _in_column(row, parts[3])
        value = pick(text_cell, parts[4] if len(parts) == 5 else None)
        verdict = " ".join(v for v in (_verdict(text_cell), _row_verdict(row)) if v)
    except QuoteError as err:
        raise QuoteError(f"{doc}:{line}: {err}") from None
    return value, verdict


def stale(docs: list[Path]) -> list[Quote]:
    pages: dict = {}
    return [q for d in docs for q in quotes(d, pages) if q.is_stale]


def update(doc: Path) -> list[Quote]:
    """Rewrite a document's stale quotes in place; returns them."""
    changed = [q for q in quotes(doc) if q.is_stale]
    if changed:
        text = QUOTE.sub(lambda m: _rewrite(m, changed), doc.read_text())
        current = {q.name: q.current for q in changed if q.name}
        text = REF_USE.sub(lambda m: f"[{_typeset(current[m.group(2)])}][{m.group(2)}]" if m.group(2) in current
                           else m.group(0), text)
        doc.write_text(text)
    return changed


def _slug(text: str, words: int) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower().replace("×", "x"))[:words])


def reference_name(address: str, taken: dict[str, str]) -> str:
    """A short readable name for a comment quote's address (page folder, row, column, pick), unique in `taken`
    ({name: address}); the same address keeps its name."""
    for name, known in taken.items():
        if known == address:
            return name
    page, _section, row, column, *how = _parts(address)
    base = "-".join(p for p in (_slug(Path(page).parent.name, 2), _slug(row, 3),
                                ("vs-" if column.startswith("−") else "") + _slug(column, 2),
                                _slug(how[0].replace(">=", "ge").replace(">", "gt"), 2) if how else "") if p)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken[name] = address
    return name


def convert(doc: Path) -> int:
    """Rewrite a document's comment quotes as reference-style ones, each section's definitions at its end
    (before the next heading outside a code block); returns how many quotes were rewritten. Checked before and
    after: the numbers and the cells they name do not change."""
    before = [(q.quoted, q.current) for q in quotes(doc)]
    taken = dict(_definitions(doc, doc.read_text()))
    taken = {name: f"{page} | {address}" for name, (page, address) in taken.items()}
    out, pending, fenced, n, emitted = [], [], False, 0, set(taken)

    def flush():
        if pending:
            while out and not out[-1].strip():
                out.pop()
            out.extend(["", *dict.fromkeys(pending), ""])
            pending.clear()

    for line in doc.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            flush()
        if not fenced:
            def use(m):
                name = reference_name(m.group(1), taken)
                page, address = m.group(1).split("|", 1)
                if name not in emitted:  # one definition per name, in the first section that uses it
                    emitted.add(name)
                    pending.append(f'[{name}]: {page.strip()} "{address.strip()}"')
                return f"[{m.group(2)}][{name}]"
            line, k = QUOTE.subn(use, line)
            n += k
        out.append(line)
    flush()
    doc.write_text("\n".join(out).rstrip("\n") + "\n")
    after = [(q.quoted, q.current) for q in quotes(doc)]
    if sorted(after) != sorted(before):
        raise QuoteError(f"{doc}: converting changed the quotes ({len(before)} before, {len(after)} after)")
    return n


def _rewrite(m: re.Match, changed: list[Quote]) -> str:
    for q in changed:
        if q.address == m.group(1) and _same(q.quoted, m.group(2)):
            return f"<!-- {m.group(1)} -->{_typeset(q.current)}"
    return m.group(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.quotes", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["check", "update", "convert"])
    parser.add_argument("docs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "check":
            pages: dict = {}
            found = [q for doc in args.docs for q in quotes(doc, pages)]
            bad = [q for q in found if q.is_stale]
            for q in bad:
                crossed = "  CROSSED ZERO" if q.crossed_zero else ""
                print(f"{q.doc}:{q.line}: quotes {q.quoted}, the page has {q.current}  [{q.address}]{crossed}")
            print(f"{len(found) - len(bad)} of {len(found)} quotes match their pages")
            return 1 if bad else 0
        if args.action == "convert":
            for doc in args.docs:
                print(f"{doc}: {convert(doc)} comment quote(s) rewritten as reference-style quotes")
            return 0
        crossed = []
        for doc in args.docs:
            for q in update(doc):
                flag = f"  (the cell reads {q.verdict or 'no ▲/▼'}: check the words around it)"
                if q.crossed_zero:
                    flag += (f"\n    CROSSED ZERO: the quoted interval {side_of_zero(q.quoted)}, the page's "
                             f"{side_of_zero(q.current)}: the verdict in the prose must change")
                    crossed.append(q)
                print(f"{q.doc}:{q.line}: {q.quoted} -> {_typeset(q.current)}  [{q.address}]{flag}")
        if crossed:
            print(f"{len(crossed)} quoted difference(s) crossed zero: "
                  + ", ".join(f"{q.doc}:{q.line}" for q in crossed))
        return 0
    except QuoteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
