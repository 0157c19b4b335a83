"""How far IFT and its random-direction control move the cache from ICL (prints; not a test).

The control (`method=random_direction`) moves by IFT's update size at every step, in a fresh Gaussian direction
each step: a random walk. IFT's steps, with momentum β = 0.9, point roughly the same way from step to step, so at
equal step sizes IFT ends farther from ICL. This measures how much: per step t, the distance from step 1's cache,
‖K̃ₜ − K̃₁‖ / ‖K̃₁‖ averaged over layers (keys; values beside), for IFT and for the control, and IFT's
straightness ‖K̃ₜ − K̃₁‖ / Σ‖Δ‖ (1: every step the same direction; a random walk of n equal steps: about 1/√n).
Tuning only: no row is scored.

    python bench/bench_displacement.py [--model gemma3-270m|bundled|PATH] [--task sst2] [--seeds 0,1,2] [--T 15]
"""
from __future__ import annotations

import statistics

import torch
from benchargs import task_parser

import ift
from ift.controls import RandomDirectionTuner
from ift.tasks import load_task

SETTINGS = {"default (aligned, η 0.1)": ("aligned", 0.1), "paper (continue, η 0.01)": ("continue", 0.01)}


def distances(prefixes, name: str) -> tuple[list[float], list[float]]:
    """Per step: mean over layers of ‖Xₜ − X₁‖ / ‖X₁‖, and of the path length Σ‖Xₛ − Xₛ₋₁‖ / ‖X₁‖ (X: keys or values)."""
    first = previous = None
    far, path, walked = [], [], None
    for p in prefixes:
        layers = getattr(p, name)
        if first is None:
            first, walked = layers, [0.0] * len(layers)
            base = [torch.linalg.vector_norm(x).item() for x in first]
        else:
            walked = [w + torch.linalg.vector_norm(x - y).item() for w, x, y in zip(walked, layers, previous)]
        far.append(statistics.mean(torch.linalg.vector_norm(x - f).item() / b for x, f, b in zip(layers, first, base)))
        path.append(statistics.mean(w / b for w, b in zip(walked, base)))
        previous = layers
    return far, path


def main() -> None:
    ap = task_parser(__doc__, T=15)
    ap.add_argument("--model", default="gemma3-270m", help="any ift.load_model source")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = ift.load_model(args.model, dtype="fp32", device="cpu")
    task = load_task(args.task, data_dir=args.data_dir)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.model} on {args.task}, {args.n_shot}-shot, seeds {args.seeds}, T = {args.T}: mean over seeds of the "
          f"mean over layers (keys / values)\n")
    for label, (mode, eta) in SETTINGS.items():
        rows = {}
        for seed in seeds:
            text = task.demonstrations(args.n_shot, seed).text
            tuners = {"IFT": ift.ForwardTuner(lm, eta=eta, beta=0.9, position_mode=mode),
                      "random direction": RandomDirectionTuner(lm, eta=eta, beta=0.9, position_mode=mode, seed=seed)}
            for arm, tuner in tuners.items():
                prefixes = [p for p in tuner.steps(text, args.T) if not p.diverged]
                for name in ("keys", "values"):
                    rows.setdefault((arm, name), []).append(distances(prefixes, name))
        print(f"{label}\n| step | IFT ‖K̃ₜ−K̃₁‖/‖K̃₁‖ | random direction | ratio | IFT straightness (K / V) | "
              f"random direction straightness |\n|---:|---:|---:|---:|---:|---:|")
        for t in range(1, args.T):
            def mean(arm, name, which):
                got = [r[which][t] for r in rows[(arm, name)] if len(r[which]) > t]
                return statistics.mean(got) if got else float("nan")
            ift_far, rd_far = mean("IFT", "keys", 0), mean("random direction", "keys", 0)
            straight = [mean("IFT", n, 0) / mean("IFT", n, 1) for n in ("keys", "values")]
            rd_straight = mean("random direction", "keys", 0) / mean("random direction", "keys", 1)
            print(f"| {t + 1} | {ift_far:.4f} | {rd_far:.4f} | {ift_far / rd_far:.2f} | "
                  f"{straight[0]:.2f} / {straight[1]:.2f} | {rd_straight:.2f} |")
        print()


if __name__ == "__main__":
    main()
