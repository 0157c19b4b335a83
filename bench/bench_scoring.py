"""Scoring throughput on the bundled model and real SST-2 / TREC data (prints a table; not a test).

Compares, on the same examples and the same step-1 prefix:
  tuned      this scorer with the demonstrations' cache as a prefix (queries only in the input)
  reference  the original code's way: every candidate its own sequence, right-padded to the longest
             example of the dataset, with the prefix cache expanded over the batch
  icl        this scorer with the demonstrations concatenated into every input
  icl-reference  the original code's way with the demonstrations concatenated into every candidate's row
and checks that all three predict the same answer for every example.

    python bench/bench_scoring.py [--data-dir ../shared/data] [--limit 200] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import ift
from ift.cache import run
from ift.efficiency import measure

TASKS = {
    # task: (split, text field, label field, template, label words)
    "sst2": ("validation", "sentence", "label", "Review: {}\nSentiment:", [" negative", " positive"]),
    "trec": ("test", "text", "coarse_label", "Question: {}\nType:",
             [" Abbreviation", " Entity", " Description", " Person", " Location", " Number"]),
}


def read_rows(data_dir: Path, task: str, split: str) -> list[dict]:
    with open(data_dir / task / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def build(data_dir: Path, task: str, limit: int):
    split, text, label, template, words = TASKS[task]
    train = read_rows(data_dir, task, "train")
    demos = [next(r for r in train if r[label] == c) for c in range(len(words))]  # 1 per class, first seen
    demo_text = "".join(template.format(r[text].strip()) + words[r[label]] + "\n\n" for r in demos)
    rows = read_rows(data_dir, task, split)[:limit]
    examples = [ift.Example.shared(template.format(r[text].strip()), words, r[label], i) for i, r in enumerate(rows)]
    return demo_text, examples


@torch.no_grad()
def reference_scores(lm, examples, batch_size: int, stats: dict, prefix=None, demo_text=None) -> list[list[float]]:
    """The original code's scoring: one row per candidate, padded to the dataset's longest row, after
    either the prefix cache (expanded over the batch) or the demonstrations' tokens."""
    tok, model = lm.tokenizer, lm.model
    base = tok(demo_text, add_special_tokens=True).input_ids if demo_text else []
    rows = []  # (example, candidate, ids, start of the answer span)
    for e, ex in enumerate(examples):
        for j, (ctx, cont) in enumerate(zip(ex.contexts, ex.continuations)):
            q = tok(ctx, add_special_tokens=False).input_ids
            full = tok(ctx + cont, add_special_tokens=False).input_ids
            rows.append((e, j, base + full, len(base) + len(q)))
    width = max(len(r[2]) for r in rows)
    out = [[0.0] * len(ex.continuations) for ex in examples]
    L = prefix.length if prefix is not None else 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        ids = torch.full((len(chunk), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L + width), dtype=torch.long)
        mask[:, :L] = 1
        for b, (_, _, full, _) in enumerate(chunk):
            ids[b, : len(full)] = torch.tensor(full)
            mask[b, L: L + len(full)] = 1
        positions = (L + torch.arange(width)).expand(len(chunk), width)
        logits = run(model, input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                     position_ids=positions.to(lm.device),
                     cache=prefix.to_cache(model, len(chunk)) if prefix is not None else None).logits
        lp = torch.log_softmax(logits.float(), -1)
        stats["tokens"] = stats.get("tokens", 0) + ids.numel()
        for b, (e, j, full, start) in enumerate(chunk):
            out[e][j] = sum(lp[b, t - 1, full[t]].item() for t in range(start, len(full)))
    stats["queries"] = len(examples)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("IFT_DATA_DIR", str(Path(__file__).parents[2] / "shared" / "data")))
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    lm = ift.load_model(args.model)
    print(f"model {lm.name} on {lm.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.limit} examples per task\n")
    print("| task | method | queries/s | tokens/query | peak mem (MB) | speed-up of tuned | same predictions |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for task in args.tasks:
        demo_text, examples = build(Path(args.data_dir), task, args.limit)
        prefix = next(ift.ForwardTuner(lm).steps(demo_text, T=1))
        methods = {
            "tuned": lambda s: [x.sum_logprobs for x in ift.score_examples(lm, examples, prefix=prefix,
                                                                            batch_size=args.batch_size, stats=s)],
            "reference": lambda s: reference_scores(lm, examples, args.batch_size, s, prefix=prefix),
            "icl": lambda s: [x.sum_logprobs for x in ift.score_examples(lm, examples, demonstrations=demo_text,
                                                                          batch_size=args.batch_size, stats=s)],
            "icl-reference": lambda s: reference_scores(lm, examples, args.batch_size, s, demo_text=demo_text),
        }
        for fn in methods.values():  # warm-up: one-time allocations must not count as any method's peak
            fn({})
        runs = {}
        for method, fn in methods.items():
            stats, out = {}, {}
            m = measure(lambda: out.update(scores=fn(stats)), len(examples), lm.device)
            preds = [max(range(len(s)), key=s.__getitem__) for s in out["scores"]]
            runs[method] = (m["queries_per_s"], stats["tokens"] / len(examples), m["peak_mem_mb"], preds)
        for method, (qps, tpq, mb, preds) in runs.items():
            speedup = runs["tuned"][0] / qps
            same = "yes" if preds == runs["tuned"][3] else f"NO ({sum(a != b for a, b in zip(preds, runs['tuned'][3]))} differ)"
            print(f"| {task} | {method} | {qps:.1f} | {tpq:.1f} | {mb:.0f} | {speedup:.2f}x | {same} |")


if __name__ == "__main__":
    main()
