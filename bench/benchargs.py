"""The command line the benchmarks share: one task's demonstrations and evaluation rows, and the thread count."""
from __future__ import annotations

import argparse
import os

import torch

from ift.tasks import load_task


def task_parser(doc: str, T: int) -> argparse.ArgumentParser:
    """A parser with the task, data directory, shots, rows, steps and threads every benchmark takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data-dir", default=os.environ.get("IFT_DATA_DIR", "../shared/data"))
    ap.add_argument("--n-shot", type=int, default=1)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--T", type=int, default=T)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def demos_and_rows(args: argparse.Namespace):
    """Seed 0's demonstrations and evaluation rows for the parsed task (and the thread count applied)."""
    torch.set_num_threads(args.threads)
    task = load_task(args.task, data_dir=args.data_dir)
    return task.demonstrations(args.n_shot, seed=0), task.eval_examples(seed=0, limit=args.limit)
