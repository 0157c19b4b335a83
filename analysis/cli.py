"""The analysis commands' shared main: sources in, one page out (python -m analysis.study / analysis.report)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from analysis import load


def main(prog: str, doc: str, build: Callable[[list[load.Run], argparse.Namespace], Path], page: str,
         argv=None, options: Callable[[argparse.ArgumentParser], None] | None = None) -> Path:
    """Parse `sources --out --metric` (and `options`' own), load the runs, `build(runs, args)`, print the path.
    `page` names what --out receives; no run found is a usage error naming the sources."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    ap.add_argument("sources", nargs="+",
                    help="results directories (job dirs or trees), study archives (*.tar.gz), wandb:<entity>/<project>")
    ap.add_argument("--out", default="reports", help=f"output directory for {page}")
    ap.add_argument("--metric", default="acc", choices=["acc", "acc_norm"],
                    help="acc = summed log-probability; acc_norm = per-token mean")
    if options is not None:
        options(ap)
    args = ap.parse_args(argv)
    runs = load.load(args.sources)
    if not runs:
        ap.error(f"no runs (meta.json) found in {', '.join(args.sources)}")
    path = build(runs, args)
    print(path)
    return path
