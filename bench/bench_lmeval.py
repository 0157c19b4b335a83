"""lm-evaluation-harness's HFLM against ift's shared-query scorer on the same requests (prints a table; not a test).

Both score the same harness task rows (the harness's own prompt, ift's seeded demonstrations) on the same
weights (the bundled model by default): the harness with its own batching, one row per (context,
continuation) request; ift with `score_examples`, once with the demonstrations in every input
(tokenization="harness", identical log-likelihoods) and once with the demonstrations' cache as a prefix
(what IFT scores with). Prints seconds, requests per second and the largest log-likelihood difference.

    python bench/bench_lmeval.py [--data-dir ../shared/data] [--tasks sst2,copa] [--limit 100] [--shots 1]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import ift
from ift.baselines import icl_prefix
from ift.lmeval import hflm, requests
from ift.tasks.harness import load_harness_task


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("IFT_DATA_DIR", "../shared/data"))
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--tasks", default="sst2,copa")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--shots", type=int, default=1, help="demonstrations (per class for fixed-choice tasks)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm = ift.load_model(args.model)
    harness = hflm(lm, batch_size=args.batch_size)
    print(f"model {lm.name}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.shots} shot(s)")
    print(f"{'task':8} {'requests':>8} {'method':28} {'seconds':>8} {'req/s':>8} {'speed-up':>8} {'max |dLL|':>10}")
    for name in args.tasks.split(","):
        task = load_harness_task(name, args.data_dir, eval_limit=args.limit)
        examples = task.eval_examples(seed=0)
        demos = task.demonstrations(args.shots, seed=0).text
        reqs = requests(examples, demos)
        ref, t_ref = timed(lambda: [ll for ll, _ in harness.loglikelihood(reqs, disable_tqdm=True)])
        prefix = icl_prefix(lm, demos)
        runs = {
            "lm-eval HFLM": (ref, t_ref),
            "ift scorer, same tokens": timed(lambda: [x for s in ift.score_examples(
                lm, examples, demonstrations=demos, batch_size=args.batch_size, tokenization="harness")
                for x in s.sum_logprobs]),
            "ift scorer, prefix cache": timed(lambda: [x for s in ift.score_examples(
                lm, examples, prefix=prefix, batch_size=args.batch_size) for x in s.sum_logprobs]),
        }
        for method, (lls, secs) in runs.items():
            diff = max(abs(a - b) for a, b in zip(lls, ref))
            print(f"{name:8} {len(reqs):8d} {method:28} {secs:8.2f} {len(reqs) / secs:8.1f} {t_ref / secs:7.1f}x "
                  f"{diff:10.2e}")
    print("(the prefix cache tokenises the demonstrations apart from the query, ift's rule: its log-likelihoods "
          "differ from the harness's where the tokenizer merges across that boundary; docs/lmeval.md)")


if __name__ == "__main__":
    main()
