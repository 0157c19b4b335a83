"""Prose that quotes a results page stays true to it (analysis.quotes)."""
from pathlib import Path

import pytest

from analysis import quotes

ROOT = Path(__file__).resolve().parents[1]

PAGE = """# A study

## By task

| task | n_shot | seeds | IFT | IFT, paper Δ | zero-shot | dev-chosen steps |
|---|---|---|---|---|---|---|
| sst2 | 1 | 26 | +6.6 ± 4.5 ▲ | +12.3 ± 4.3 | -4.9 ± 5.2 | 12, 6, 1, 9 |
| mean over tasks |  |  | +0.5 ± 4.8 (7 tasks) | +5.9 ± 4.1 | -2.3 ± 5.8 / +1.0 ± 2.0 |  |

## Other

| task | IFT |
|---|---|
| sst2 | +1.0 ± 1.0 |
"""


def _write(tmp_path, doc_text, page_text=PAGE):
    (tmp_path / "page.md").write_text(page_text)
    doc = tmp_path / "doc.md"
    doc.write_text(doc_text)
    return doc


def q(address, value):
    return f"<!-- page.md | {address} -->{value}"


def test_quotes_that_match_their_cells_are_not_stale(tmp_path):
    doc = _write(tmp_path, "SST-2 " + q("By task | sst2 | IFT", "+6.6 ± 4.5")
                 + " over " + q("By task | sst2 | seeds", "26") + " seeds; zero-shot "
                 + q("By task | sst2 | zero-shot", "−4.9 ± 5.2") + " (typographic minus).\n")
    assert [x.current for x in quotes.quotes(doc)] == ["+6.6 ± 4.5", "26", "-4.9 ± 5.2"]
    assert quotes.stale([doc]) == []


def test_a_changed_page_makes_the_quote_stale_and_update_rewrites_it(tmp_path):
    doc = _write(tmp_path, "intro\nSST-2 " + q("By task | sst2 | IFT", "+9.7 ± 5.2")
                 + ", mean " + q("By task | mean over tasks | IFT", "+1.1 ± 5.6") + ".\n")
    bad = quotes.stale([doc])
    assert [(x.line, x.quoted, x.current, x.verdict) for x in bad] == [
        (2, "+9.7 ± 5.2", "+6.6 ± 4.5", "▲"), (2, "+1.1 ± 5.6", "+0.5 ± 4.8", "")]
    assert quotes.main(["check", str(doc)]) == 1
    quotes.update(doc)
    assert quotes.stale([doc]) == []
    assert quotes.main(["check", str(doc)]) == 0
    assert "-->+6.6 ± 4.5," in doc.read_text() and doc.read_text().startswith("intro\n")


def test_update_flags_a_quoted_difference_whose_interval_crossed_zero(tmp_path, capsys):
    doc = _write(tmp_path, "IFT " + q("By task | sst2 | IFT", "+2.0 ± 3.0") + " (no difference); paper "
                 + q("By task | sst2 | IFT, paper Δ", "+11.0 ± 4.0") + "; zero-shot "
                 + q("By task | sst2 | zero-shot", "+1.0 ± 0.5") + "; other "
                 + q("Other | sst2 | IFT", "+1.5 ± 1.5") + ".\n")
    crossed = {x.quoted: x.crossed_zero for x in quotes.stale([doc])}
    # includes 0 -> above 0; above -> above; above -> below; touching 0 after rounding still includes it
    assert crossed == {"+2.0 ± 3.0": True, "+11.0 ± 4.0": False, "+1.0 ± 0.5": True, "+1.5 ± 1.5": False}
    assert quotes.main(["update", str(doc)]) == 0
    out = capsys.readouterr().out
    assert out.count("CROSSED ZERO") == 2 and "2 quoted difference(s) crossed zero" in out
    assert "the quoted interval includes 0, the page's lies above 0" in out


def test_side_of_zero_reads_only_signed_intervals():
    assert quotes.side_of_zero("−4.9 ± 5.2") == "includes 0"
    assert quotes.side_of_zero("-6.0 ± 5.2") == "lies below 0"
    assert quotes.side_of_zero("60.6 ± 2.0") == ""  # an accuracy, not a difference
    assert quotes.side_of_zero("26") == ""


def test_the_verdict_shows_the_rows_verdict_column(tmp_path):
    page = PAGE + "\n## Arms\n\n| task | arm | honest Δ vs ICL | verdict |\n|---|---|---|---|\n" \
                  "| sst2 | IFT | +3.9 ± 4.4 | no difference |\n"
    doc = _write(tmp_path, q("Arms | sst2 / IFT | honest", "+4.5 ± 3.8") + "\n", page)
    assert [x.verdict for x in quotes.stale([doc])] == ["no difference"]


def test_update_typesets_negative_numbers_with_a_minus_sign(tmp_path):
    doc = _write(tmp_path, q("By task | sst2 | zero-shot", "0") + "\n")
    quotes.update(doc)
    assert doc.read_text() == q("By task | sst2 | zero-shot", "−4.9 ± 5.2") + "\n"


def test_picks_take_another_number_or_count_steps(tmp_path):
    doc = _write(tmp_path, " ".join([
        q("By task | mean over tasks | zero-shot | 2", "0"),
        q("By task | sst2 | dev-chosen steps | count>=6", "0"),
        q("By task | sst2 | dev-chosen steps | count>8", "0"),
        q("By task | sst2 | dev-chosen steps | len", "0")]))
    assert [x.current for x in quotes.quotes(doc)] == ["+1.0 ± 2.0", "3", "2", "4"]


def test_prefixes_name_a_section_or_column_when_unique(tmp_path):
    doc = _write(tmp_path, q("By | sst2 | zero | 1", "-4.9 ± 5.2") + q("Oth | sst2 | IFT", "+1.0 ± 1.0")
                 + q("By task | sst2 | IFT,", "+12.3 ± 4.3"))
    assert quotes.stale([doc]) == []


@pytest.mark.parametrize("address, message", [
    ("Nowhere | sst2 | IFT", "section 'Nowhere' not found; choices: A study; By task; Other"),
    ("By task | mr | IFT", "row 'mr' not found in section 'By task'; rows: sst2; mean over tasks"),
    ("By task | sst2 | I", "column 'I' is ambiguous; choices: task; n_shot; seeds; IFT; IFT, paper Δ"),
    ("By task | sst2 | IFT | median", "pick 'median': expected a position"),
    ("By task | sst2", "is not PAGE | SECTION | ROW | COLUMN [| PICK]"),
])
def test_an_address_that_names_no_cell_is_an_error_naming_the_choices(tmp_path, address, message):
    doc = _write(tmp_path, "x\n" + q(address, "1"))
    with pytest.raises(quotes.QuoteError, match="doc.md:2: ") as err:
        quotes.quotes(doc)
    assert message in str(err.value)
    assert quotes.main(["check", str(doc)]) == 2


def test_an_address_not_followed_directly_by_its_number_is_an_error(tmp_path):
    """Else the quote would go unchecked, silently."""
    doc = _write(tmp_path, "x\nSST-2 <!-- page.md | By task | sst2 | IFT --> +6.6 ± 4.5\n")
    with pytest.raises(quotes.QuoteError, match="doc.md:2: .* is not followed directly by the number it quotes"):
        quotes.quotes(doc)


def test_a_column_whose_header_has_an_escaped_pipe_is_one_column(tmp_path):
    """(An address escapes it too.)"""
    page = PAGE + "\n## Cosines\n\n| mode | mean \\|cos\\| | runs |\n|---|---|---|\n| aligned | 0.008 | 45 |\n"
    doc = _write(tmp_path, q("Cosines | aligned | mean \\|cos\\|", "0.008") + q("Cosines | aligned | runs", "45"), page)
    assert quotes.stale([doc]) == []


def test_a_missing_page_is_an_error(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- gone.md | By task | sst2 | IFT -->1")
    with pytest.raises(quotes.QuoteError, match="page gone.md does not exist"):
        quotes.quotes(doc)


def test_the_committed_docs_quote_their_pages_as_they_are():
    """results.md and the README quote the committed pages; a page rebuilt with more seeds fails here until
    `python -m analysis.quotes update docs/results.md README.md` is run (and the words around them read)."""
    docs = [ROOT / "docs" / "results.md", ROOT / "README.md"]
    assert sum(len(quotes.quotes(d)) for d in docs) > 50
    assert [(x.doc.name, x.line, x.quoted, x.current) for x in quotes.stale(docs)] == []


def test_the_findings_table_holds_the_nine_task_pages_numbers():
    """results.md's findings table (cells cannot hold an address: its pipes would split them) is the nine-task
    page's By task and Overview cells, minus signs typeset."""
    page = quotes.parse_page((ROOT / "docs" / "results" / "nine_fp32" / "study.md").read_text())
    columns = ["ICL acc", "zero-shot", "ICL ×r (r on dev)", "ICL, k×n shots (k on dev)",
               "gradient tuning lr=0.01 (steps on dev)", "IFT (mode, η, β, T on dev)",
               "IFT (mode, η, β on dev; T by early stopping, patience 2)", "IFT, paper protocol Δ"]
    names = {"SST-2": "sst2", "SST-5": "sst5", "MR": "mr", "TREC": "trec", "AGNews": "agnews", "COPA": "copa",
             "WinoGrande": "winogrande", "OpenBookQA": "obqa", "HellaSwag": "hellaswag"}
    want = {name: [quotes.cell(page, "By task", task, c) for c in columns] for name, task in names.items()}
    want["**mean over tasks**"] = [""] + [quotes.cell(page, "Overview", method, "mean honest Δ") for method in columns[1:-1]] \
        + [quotes.cell(page, "Overview", "IFT (mode, η, β, T on dev)", "mean paper Δ")]
    section = quotes.parse_page((ROOT / "docs" / "results.md").read_text())["Findings (nine tasks)"]
    have = {row[0]: [c.replace("−", "-") for c in row[1:]] for _, row in section}
    assert have == want


# --- reference-style quotes: the number plain in the text, its cell in a link definition ---------------------

def ref_doc(tmp_path, body, definitions, page_text=PAGE):
    return _write(tmp_path, body + "\n\n" + "\n".join(f'[{n}]: page.md "{a}"' for n, a in definitions.items()) + "\n",
                  page_text)


def test_reference_quotes_are_checked_and_update_rewrites_every_use(tmp_path):
    doc = ref_doc(tmp_path, "SST-2 [+9.7 ± 5.2][sst2-ift] over [26][sst2-seeds] seeds; again [+9.7 ± 5.2][sst2-ift].",
                  {"sst2-ift": "By task | sst2 | IFT", "sst2-seeds": "By task | sst2 | seeds"})
    found = quotes.quotes(doc)
    assert [(x.name, x.quoted, x.current, x.verdict) for x in found] == [
        ("sst2-ift", "+9.7 ± 5.2", "+6.6 ± 4.5", "▲"), ("sst2-seeds", "26", "26", ""),
        ("sst2-ift", "+9.7 ± 5.2", "+6.6 ± 4.5", "▲")]
    assert quotes.main(["check", str(doc)]) == 1
    quotes.update(doc)
    assert doc.read_text().startswith("SST-2 [+6.6 ± 4.5][sst2-ift] over [26][sst2-seeds] seeds; again "
                                      "[+6.6 ± 4.5][sst2-ift].")
    assert quotes.main(["check", str(doc)]) == 0


def test_a_reference_quote_with_a_pick_and_an_escaped_pipe(tmp_path):
    page = PAGE + "\n## Cosines\n\n| mode | mean \\|cos\\| | runs |\n|---|---|---|\n| aligned | 0.008 | 45 |\n"
    doc = ref_doc(tmp_path, "[0.008][cos] [3][late] [−1.0][mean2]",
                  {"cos": "Cosines | aligned | mean \\|cos\\|", "late": "By task | sst2 | dev-chosen steps | count>=6",
                   "mean2": "By task | mean over tasks | zero-shot | 2"}, page)
    assert [(x.quoted, x.current) for x in quotes.quotes(doc)] == [("0.008", "0.008"), ("3", "3"), ("−1.0", "+1.0 ± 2.0")]


@pytest.mark.parametrize("body, definitions, message", [
    ("[+6.6 ± 4.5][nope]", {}, "[+6.6 ± 4.5][nope] names no definition"),
    ("[+6.6 ± 4.5][a]", {"a": "By task | mr | IFT"}, "row 'mr' not found in section 'By task'"),
    ("[+6.6 ± 4.5][a]", {"a": "By task | sst2"}, "is not PAGE | SECTION | ROW | COLUMN [| PICK]"),
])
def test_a_reference_quote_that_names_no_cell_is_an_error(tmp_path, body, definitions, message):
    doc = ref_doc(tmp_path, body, definitions)
    with pytest.raises(quotes.QuoteError, match="doc.md:1: ") as err:
        quotes.quotes(doc)
    assert message in str(err.value)


def test_a_name_defined_twice_is_an_error(tmp_path):
    doc = _write(tmp_path, '[1][a]\n\n[a]: page.md "By task | sst2 | seeds"\n[a]: page.md "By task | sst2 | IFT"\n')
    with pytest.raises(quotes.QuoteError, match=r"doc.md:4: \[a\] is defined twice"):
        quotes.quotes(doc)


def test_convert_turns_comment_quotes_into_readable_ones_with_the_same_cells(tmp_path):
    text = ("# Doc\n\nSST-2 " + q("By task | sst2 | IFT", "+6.6 ± 4.5") + " and again " + q("By task | sst2 | IFT", "+6.6 ± 4.5")
            + ", seeds " + q("By task | sst2 | seeds", "26") + ".\n\n```bash\n# not a heading\n```\n\n## Next\n\n- a list "
            + q("Other | sst2 | IFT", "+1.0 ± 1.0") + "\n")
    doc = _write(tmp_path, text)
    assert quotes.convert(doc) == 4
    out = doc.read_text()
    assert "<!--" not in out
    assert out == (
        "# Doc\n\nSST-2 [+6.6 ± 4.5][sst2-ift] and again [+6.6 ± 4.5][sst2-ift], seeds [26][sst2-seeds].\n\n"
        "```bash\n# not a heading\n```\n\n"
        '[sst2-ift]: page.md "By task | sst2 | IFT"\n[sst2-seeds]: page.md "By task | sst2 | seeds"\n\n'
        "## Next\n\n- a list [+1.0 ± 1.0][sst2-ift-2]\n\n"
        '[sst2-ift-2]: page.md "Other | sst2 | IFT"\n')
    assert [(x.quoted, x.current) for x in quotes.quotes(doc)] == [("+6.6 ± 4.5", "+6.6 ± 4.5")] * 2 + \
        [("26", "26"), ("+1.0 ± 1.0", "+1.0 ± 1.0")]


def test_the_committed_docs_quote_in_readable_markdown():
    """No page-cell address inside a sentence: every quote of results.md and the README is reference-style."""
    for doc in (ROOT / "docs" / "results.md", ROOT / "README.md"):
        assert quotes.ADDRESS.search(doc.read_text()) is None, doc
        assert all(x.name for x in quotes.quotes(doc))
