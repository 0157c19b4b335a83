"""fp32 against bf16-mixed (quant=bf16_mixed) on the bundled model and a local benchmark (prints; not a test).

Tunes the same demonstrations for T steps in both precisions and scores the same evaluation rows after
each step; prints wall time, accuracy per step and how many predictions agree. bf16-mixed keeps fp32
weights and tuning state and runs the products under torch.autocast (fast on CPUs with AMX and on GPUs).

    python bench/bench_mixed_precision.py [--model bundled|gemma3-270m|PATH] [--task sst2] [--limit 100] [--T 4]

Run it once per machine (and model) to choose the studies' precision: on CPUs without AMX bf16-mixed is no
faster than fp32 (docs/results.md, *Precision*).
"""
from __future__ import annotations

import time

from benchargs import demos_and_rows, task_parser

import ift


def curve(lm, demo_text, examples, T, eta, mode):
    start, accs = time.perf_counter(), []
    for prefix in ift.ForwardTuner(lm, eta=eta, beta=0.9, position_mode=mode).steps(demo_text, T=T):
        scores = ift.score_examples(lm, examples, prefix=prefix)
        accs.append(ift.accuracy(scores)[0])
    return accs, [s.pred for s in scores], time.perf_counter() - start


def main() -> None:
    ap = task_parser(__doc__, T=4)
    ap.add_argument("--model", default="bundled", help="any ift.load_model source")
    ap.add_argument("--eta", type=float, default=0.1)
    ap.add_argument("--mode", default="aligned", choices=["aligned", "continue"])
    args = ap.parse_args()
    demos, examples = demos_and_rows(args)
    rows = {}
    for dtype in ("fp32", "bf16-mixed"):
        lm = ift.load_model(args.model, dtype=dtype, device="cpu")
        rows[dtype] = curve(lm, demos.text, examples, args.T, args.eta, args.mode)
    print(f"{args.model} on {args.task}: {len(examples)} rows, T={args.T}, eta={args.eta}, {args.mode}, {args.threads} thread(s)")
    print("| precision | seconds | accuracy per step |\n|---|---:|---|")
    for dtype, (accs, _, seconds) in rows.items():
        print(f"| {dtype} | {seconds:.1f} | {' '.join(f'{a:.3f}' for a in accs)} |")
    agree = sum(a == b for a, b in zip(rows["fp32"][1], rows["bf16-mixed"][1]))
    print(f"speed-up {rows['fp32'][2] / rows['bf16-mixed'][2]:.2f}x; last-step predictions agree on "
          f"{agree} of {len(examples)} rows")


if __name__ == "__main__":
    main()
