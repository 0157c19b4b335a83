"""Every committed results page that has its runs archived rebuilds byte for byte from a clone.

The pages under docs/results/ are the project's evidence; this is the check that a number on them is still
what the committed runs and the current analysis code give (a silent change in a protocol rule, a statistic or
the store reader shows up here as a diff). The title is the page's only input besides its runs.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pages whose every run is in their archive (nine/ and seeds/ predate archives: their stores were lost)
PAGES = ["seeds_sst2", "seeds_mr_winogrande_hellaswag", "eta"]


@pytest.mark.parametrize("page", PAGES)
def test_committed_page_rebuilds_byte_for_byte(page, tmp_path):
    where = ROOT / "docs" / "results" / page
    title = (where / "study.md").read_text().splitlines()[0].removeprefix("# ")
    out = tmp_path / page
    proc = subprocess.run([sys.executable, "-m", "analysis.study", str(where / "runs.tar.gz"), "--out", str(out),
                           "--title", title], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = sorted(p.name for p in out.iterdir())
    committed = sorted(p.name for p in where.iterdir() if p.name != "runs.tar.gz")
    assert built == committed
    for name in built:
        assert (out / name).read_bytes() == (where / name).read_bytes(), f"{page}/{name} differs from its rebuild"
