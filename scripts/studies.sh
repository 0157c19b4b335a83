#!/usr/bin/env bash
# The studies of issue 10 on the bundled model and the local benchmark mirror, then their results page.
#
#   bash scripts/studies.sh            # the full study: 7 tasks x 5 seeds, every method (days on a 2-core CPU,
#                                      # hours on one GPU; see docs/results.md for the measured cost)
#   bash scripts/studies.sh --quick    # the same pipeline on a tiny slice (what CI runs, ~3 min)
#
# Every method reads the same demonstrations and is scored on the same rows per seed (the seed draws
# both). Re-running skips finished jobs and resumes killed ones, so the full study can be run in pieces.
# Environment: IFT_DATA_DIR (default ../shared/data), STUDY_RESULTS (default results/studies),
# STUDY_OUT (default docs/results), and any extra launch.py overrides as arguments after --quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export IFT_DATA_DIR=${IFT_DATA_DIR:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi

if [ $quick = 1 ]; then
  results=${STUDY_RESULTS:-$(mktemp -d)/studies}
  out=${STUDY_OUT:-$results/page}
  # 2 tasks (binary classification, multiple choice) x 2 seeds, 8 eval and 4 dev rows, 3 steps
  small="hydra.sweeper.params.task=sst2,copa hydra.sweeper.params.seed=0,1 task.eval_limit=8 task.dev_size=4 optim.T=3"
  $PY launch.py experiment=study_ift "results_dir=$results" logger=disabled $small \
      hydra.sweeper.params.optim.eta=0.1,0.01 "$@"
  $PY launch.py experiment=study_momentum "results_dir=$results" logger=disabled $small \
      hydra.sweeper.params.optim.eta=0.1 "$@"
  $PY launch.py experiment=study_baselines "results_dir=$results" logger=disabled $small \
      hydra.sweeper.params.method=zero_shot,grad "$@"
  for m in "repeat method.max_repeats=2" "more_demos method.max_factor=2"; do
    # shellcheck disable=SC2086
    $PY launch.py experiment=study_baselines "results_dir=$results" logger=disabled $small \
        "hydra.sweeper.params.method=${m%% *}" ${m#* } "$@"
  done
else
  results=${STUDY_RESULTS:-results/studies}
  out=${STUDY_OUT:-docs/results}
  for preset in study_baselines study_ift study_momentum; do
    $PY launch.py experiment=$preset "results_dir=$results" "$@"
    # the local mirror lacks AGNews' train and HellaSwag's train split: their demonstrations and dev rows
    # come from the evaluation split, never from the evaluated rows (docs/tasks.md)
    $PY launch.py experiment=$preset "results_dir=$results" hydra.sweeper.params.task=agnews task.demo_split=test "$@"
    $PY launch.py experiment=$preset "results_dir=$results" hydra.sweeper.params.task=hellaswag \
        task.demo_split=validation "$@"
  done
fi
$PY -m analysis.study "$results" --out "$out" --title "IFT against its baselines (bundled SmolLM2-135M)"
