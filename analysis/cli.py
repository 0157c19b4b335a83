"""The analysis commands' shared main: sources in, one page out (python -m analysis.study / analysis.report)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from analysis import load
from analysis.arms import UnpairedRuns


def main(prog: str, doc: str, build: Callable[[list[load.Run], argparse.Namespace], Path], page: str,
         argv=None, options: Callable[[argparse.ArgumentParser], None] | None = None) -> Path:
    """Parse `sources --out --metric` (and `options`' own), load the runs, `build(runs, args)`, print the path.
    `page` names what --out receives; no run found, or a source that does not exist, is a one-line error naming
    the sources. Every skipped run is listed on stderr; unreadable or missing ones stop the command (exit 1)
    unless --allow-missing."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    ap.add_argument("sources", nargs="+",
                    help="results directories (job dirs or trees), study archives (*.tar.gz), wandb:<entity>/<project>")
    ap.add_argument("--out", default="reports", help=f"output directory for {page}")
    ap.add_argument("--metric", default="acc", choices=["acc", "acc_norm"],
                    help="acc = summed log-probability; acc_norm = per-token mean")
    ap.add_argument("--allow-missing", action="store_true",
                    help="build the page even when runs are unreadable, damaged, failed or incomplete (they are "
                         "listed as skipped)")
    if options is not None:
        options(ap)
    args = ap.parse_args(argv)
    try:
        runs = load.load(args.sources)
    except (OSError, ValueError) as err:
        ap.exit(2, f"{prog}: error: {err}\n")
    if not runs:
        ap.error(f"no runs (meta.json) found in {', '.join(args.sources)}")
    refused = load.check(runs, args.allow_missing)
    if refused:
        print(f"{prog}: error: {refused}", file=sys.stderr)
        sys.exit(1)
    try:
        path = build(runs, args)
    except UnpairedRuns as err:  # a page of unpaired runs would be wrong, not short: one line, exit 1
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(path)
    return path
