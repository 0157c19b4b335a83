"""What one IFT step costs on each model family (prints; not a test).

For every model: the demonstration prefix and query lengths in its own tokens, the seconds of one tuning step
(the re-read of the demonstrations), the seconds to score the evaluation rows with the tuned prefix, and the
peak resident memory. Gemma-3-270m has a 262k-token vocabulary (the output head is 262144 x 640, 168M of its
268M parameters) and a 512-token sliding window; SmolLM2-135M has 49k tokens and a 2048-token context. The
scorer computes the head only where a continuation token is predicted (logits_to_keep), so the vocabulary
costs per scored token, not per query token.

    python bench/bench_models.py [--models bundled,gemma3-270m] [--task sst2] [--limit 100] [--T 3] [--threads 1]
"""
from __future__ import annotations

import resource
import time

from benchargs import demos_and_rows, task_parser

import ift


def measure(source: str, demo_text: str, examples, T: int) -> dict:
    start = time.perf_counter()
    lm = ift.load_model(source, device="cpu")
    load_s = time.perf_counter() - start
    tok, cfg = lm.tokenizer, lm.model.config
    tune_s, score_s = [], []
    tuner = ift.ForwardTuner(lm, eta=0.1, beta=0.9, position_mode="aligned")
    clock = time.perf_counter()
    for prefix in tuner.steps(demo_text, T=T):
        tune_s.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        scores = ift.score_examples(lm, examples, prefix=prefix)
        score_s.append(time.perf_counter() - clock)
        clock = time.perf_counter()
    queries = [len(tok(e.contexts[0], add_special_tokens=False).input_ids) for e in examples]
    return {"model": lm.name.rsplit("/", 1)[-1], "layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size,
            "window": getattr(cfg, "sliding_window", None), "load_s": load_s,
            "prefix_tokens": prefix.keys[0].shape[-2], "query_tokens": sum(queries) / len(queries),
            "tune_s": sum(tune_s[1:]) / max(1, len(tune_s) - 1), "score_s": sum(score_s) / len(score_s),
            "acc": ift.accuracy(scores)[0], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = task_parser(__doc__, T=3)
    ap.add_argument("--models", default="bundled,gemma3-270m")
    args = ap.parse_args()
    demos, examples = demos_and_rows(args)
    print(f"{args.task}: {len(examples)} rows, {args.n_shot}-shot, T={args.T}, aligned eta 0.1, fp32, "
          f"{args.threads} thread(s); tune = one re-read step (mean of steps 2..T), score = all rows once")
    print("| model | layers | vocab | window | load s | prefix tok | query tok | tune s/step | score s/step "
          "| acc at T | peak RSS GB (cumulative) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for source in args.models.split(","):
        r = measure(source, demos.text, examples, args.T)
        print(f"| {r['model']} | {r['layers']} | {r['vocab']} | {r['window']} | {r['load_s']:.0f} | "
              f"{r['prefix_tokens']} | {r['query_tokens']:.1f} | {r['tune_s']:.2f} | {r['score_s']:.1f} | "
              f"{r['acc']:.3f} | {r['peak_rss_gb']:.1f} |")


if __name__ == "__main__":
    main()
