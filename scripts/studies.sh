#!/usr/bin/env bash
# The studies of issue 10 on the bundled model and the local benchmark mirror, then their results page.
#
#   bash scripts/studies.sh            # the full study: 9 tasks x 5 seeds, every method (days on a 2-core CPU,
#                                      # hours on one GPU; see docs/results.md for the measured cost);
#                                      # docs/results/full/
#   bash scripts/studies.sh --pilot    # the fp32 pilot, docs/results/pilot/: SST-2 and TREC x 5 seeds, every
#                                      # method (gradient tuning and its cosine with IFT's G included), 100 eval and
#                                      # 30 dev rows, T <= 8 (80 runs, about 1.3 process-hours on this CPU)
#   bash scripts/studies.sh --nine     # the nine local benchmarks x 5 seeds in bf16-mixed (quant=bf16_mixed):
#                                      # zero-shot, IFT (eta 0.1 both modes, the paper's continue/0.01), gradient
#                                      # tuning, beta 0, repetition, more demonstrations, aligned eta 0.01 (T 8 and
#                                      # 15) and 0.001 (T 15); 100 eval + 30 dev rows, T <= 8 otherwise; two
#                                      # processes at once taking the launches (arm x task group) from one queue
#                                      # (NINE_PARALLEL=1 for one; NINE_STREAM=classification or choice runs one
#                                      # task kind only);
#                                      # docs/results/nine/ (~7 hours on an AMX CPU; the committed page is
#                                      # --nine-fp32's: bf16-mixed reproduces only on the CPU kind that ran it)
#   bash scripts/studies.sh --nine-fp32  # the same arms, rows and seeds as --nine in fp32 (reproduces on any CPU;
#                                      # bf16-mixed reproduces to the digit only on the CPU kind that ran it), plus
#                                      # the default and the paper's IFT settings continued to T = 15 (the arms the
#                                      # cross-model page compares with Gemma's fp32 runs); docs/results/nine_fp32/
#   bash scripts/studies.sh --eta      # the step size: aligned IFT with eta 0.001, 0.01 and 0.1 up to T = 15, then
#                                      # the paper's continue/0.01 to T = 15 (the same rows, streams and store keys
#                                      # as --nine); docs/results/eta/
#   bash scripts/studies.sh --seeds    # more seeds for the headline comparison: ICL, zero-shot and the default IFT
#                                      # setting (aligned, eta 0.1, T <= 8 on dev), bf16-mixed, the nine-task study's
#                                      # rows; SST-2 0-39, MR 0-39, TREC 0-69, SST-5/WinoGrande 0-14, the rest 0-9
#                                      # (the seeds the nine-task page estimates for a 3-point interval, with margin;
#                                      # MR had +-3.1 with 20, SST-2 +-3.0 with 30, TREC +-6.9 with 15);
#                                      # docs/results/seeds/ (~6 hours here); SEEDS_TASKS=mr,hellaswag
#                                      # runs those tasks only (same seeds and store), page docs/results/seeds_<tasks>/
#   bash scripts/studies.sh --seeds-fp32  # the same in fp32 (reproduces on any CPU): store results/seeds_fp32,
#                                      # page docs/results/seeds_fp32/ (SEEDS_TASKS: docs/results/seeds_fp32_<tasks>/);
#                                      # both copy seeds 0-4 from their nine-task study (its store NINE_RESULTS,
#                                      # default results/nine[_fp32], or its committed archive) instead of re-running
#   bash scripts/studies.sh --gemma    # the second model family (issue 19): Gemma-3-270m base (model=gemma3_270m, fp32:
#                                      # this study's CPUs have no AMX, where bf16-mixed is no faster), the nine-task
#                                      # rows and seeds 0-4; per task, cheapest first: zero-shot, IFT default (aligned,
#                                      # eta 0.1) and the paper's setting (continue, eta 0.01) to T = 8; then both
#                                      # continued to T = 15, gradient tuning and repetition, each over every task;
#                                      # two single-thread streams as --nine;
#                                      # docs/results/gemma/ (GEMMA_QUANT=bf16_mixed on an AMX CPU or a GPU)
#   bash scripts/studies.sh --gemma-agnews  # Gemma on AGNews with demonstrations of at most 300 characters
#                                      # (+task.demo_max_chars=300, so IFT's doubled prefix fits the 512-token
#                                      # window; other demonstrations than --gemma's AGNews, so its own store and
#                                      # page): zero-shot, both IFT settings to T = 8, gradient tuning; no
#                                      # repetition: two copies and the query exceed the window on 4 of 5 seeds
#                                      # (IFT's re-read holds the doubled demonstrations without a query);
#                                      # docs/results/gemma_agnews/
#   bash scripts/studies.sh --gemma-hellaswag  # Gemma on HellaSwag with demonstrations of at most 300 characters
#                                      # (its four are 145-179 tokens on seeds 0-4, so IFT's doubled cache fits the
#                                      # window; --gemma's are 265-426 and run zero-shot only): zero-shot, both IFT
#                                      # settings to T = 8, gradient tuning and repetition up to 2 copies (three
#                                      # and a query exceed the window); docs/results/gemma_hellaswag/ (≈ 4.5 h of
#                                      # two workers here: a step scores 70 four-ending rows, ≈ 4.5 min)
#   bash scripts/studies.sh --gemma-seeds  # more seeds where --gemma's binary tasks are wider than +-3 points (its
#                                      # page's estimates, listed in docs/results.md: COPA and WinoGrande to 8 seeds, MR to 48, SST-2 to 67): every --gemma arm, seed by
#                                      # seed (a stop leaves whole seeds), two single-thread workers sharing one
#                                      # queue; the same store, keys and page as --gemma (docs/results/gemma/)
#   bash scripts/studies.sh --quick    # the same pipeline on a tiny slice in one launch (what CI runs, minutes)
#   bash scripts/studies.sh --nine-fp32 dry_run=true   # what is left: each launch's sweep report says, per job, skip,
#                                      # copy in, resume, continue or run (its archive restored first), and how
#                                      # many jobs would compute; nothing is computed, packed or built
#
# Every method reads the same demonstrations and is scored on the same rows per seed (the seed draws
# both). Re-running skips finished jobs and resumes killed ones, so the full study can be run in pieces.
# Finished runs are packed into <page directory>/runs.tar.gz (commit it with the page: no benchmark text,
# no checkpoints) and restored from it on the next run, so a study continues on another machine and its page
# is rebuilt from a clone: `python -m analysis.study docs/results/nine_fp32/runs.tar.gz --out DIR`.
# Environment: IFT_DATA_DIR (default ../shared/data), STUDY_RESULTS (the store; default results/<scale>),
# STUDY_OUT (the page; default docs/results/<scale>, whose committed archive is restored either way),
# STUDY_PAGE_ONLY=1 (pack and build the page, launch nothing: finishes a study stopped by hand), and any extra launch.py
# overrides as arguments after the scale flag (e.g. `bash scripts/studies.sh quant=bf16_mixed`: about 2x faster on a CPU with AMX or on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export IFT_DATA_DIR=${IFT_DATA_DIR:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

scale=full
title="IFT against its baselines (bundled SmolLM2-135M)"
case "${1:-}" in
  --quick|--pilot|--nine|--nine-fp32|--eta|--seeds|--seeds-fp32|--gemma|--gemma-seeds|--gemma-agnews|--gemma-hellaswag) scale=${1#--}; shift ;;
esac
# page: the study's committed page directory; STUDY_OUT may send this run's page elsewhere, but the committed
# archive is restored either way (a fresh machine with STUDY_OUT set must not run the finished jobs again)
case $scale in
  gemma-seeds) results=${STUDY_RESULTS:-results/gemma}; page=docs/results/gemma ;;
  gemma-agnews) results=${STUDY_RESULTS:-results/gemma_agnews}; page=docs/results/gemma_agnews ;;
  gemma-hellaswag) results=${STUDY_RESULTS:-results/gemma_hellaswag}; page=docs/results/gemma_hellaswag ;;
  nine-fp32) results=${STUDY_RESULTS:-results/nine_fp32}; page=docs/results/nine_fp32 ;;
  seeds-fp32) results=${STUDY_RESULTS:-results/seeds_fp32}; page=docs/results/seeds_fp32 ;;
  full) results=${STUDY_RESULTS:-results/studies}; page=docs/results/full ;;
  quick) results=${STUDY_RESULTS:-$(mktemp -d)/studies}; page=$results/page ;;
  *) results=${STUDY_RESULTS:-results/$scale}; page=docs/results/$scale ;;
esac
# the many-seeds study's tasks, cheapest first, so a stopped run leaves the most tasks complete; a subset
# (SEEDS_TASKS) is checked before anything runs and gets a page of its own (the store is shared, so no run is
# done twice)
seeds_tasks=(sst2 mr sst5 trec copa obqa agnews winogrande hellaswag)
if [[ $scale = seeds* && -n "${SEEDS_TASKS:-}" ]]; then
  for task in ${SEEDS_TASKS//,/ }; do
    if [[ " ${seeds_tasks[*]} " != *" $task "* ]]; then
      echo "SEEDS_TASKS=${SEEDS_TASKS}: '$task' is not one of: ${seeds_tasks[*]}" >&2; exit 2
    fi
  done
  page=docs/results/${scale/-/_}_${SEEDS_TASKS//,/_}
fi
out=${STUDY_OUT:-$page}
# the study's finished runs from earlier sessions or machines (committed beside its page, and in STUDY_OUT's
# archive when that is another page): skipped, not re-run
archives=("$page/runs.tar.gz")
if [ "$out" != "$page" ]; then archives+=("$out/runs.tar.gz"); fi
for archive in "${archives[@]}"; do
  if [ -f "$archive" ]; then $PY -m analysis.archive unpack "$archive" "$results"; fi
done

# STUDY_PAGE_ONLY=1: no launch runs; the store's finished runs (and the restored archive's) are packed and the
# page built, as at the end of a full run: how a study stopped by hand (kill its process group) is finished
launch() {
  if [ -n "${STUDY_PAGE_ONLY:-}" ]; then return 0; fi
  $PY launch.py "$@"
}

if [ $scale = pilot ]; then
  title="IFT against its baselines (bundled SmolLM2-135M, fp32): pilot"
  pilot=(task=sst2,trec seed=0,1,2,3,4 n_shot=1 task.eval_limit=100 task.dev_size=30 "results_dir=$results"
         logger=disabled)
  # fp32; grad: lr 0.01 for 4 Adam steps (the pilot's setting; the default is now 0.001, see docs/results.md)
  launch experiment=study_baselines "${pilot[@]}" optim.T=5 ++method.max_repeats=4 ++method.max_factor=3 \
      ++method.lr=0.01 "$@"
  launch experiment=study_ift "${pilot[@]}" optim.eta=0.1,0.01 optim.T=8 "$@"
elif [[ $scale = nine* || $scale = eta || $scale = gemma* ]]; then
  title="IFT against its baselines on nine benchmarks (bundled SmolLM2-135M, bf16-mixed)"
  common=(seed=0,1,2,3,4 quant=bf16_mixed "results_dir=$results" logger=disabled)
  rows="task.eval_limit=100 task.dev_size=30"
  # one stream per process: classification (n_shot per class) and multiple choice (n_shot in all); AGNews and
  # HellaSwag draw demonstrations and dev rows from their only other split, never from the evaluated rows;
  # HellaSwag's rows cost ~6x an SST-2 row, so it has 50 evaluation and 20 dev rows and comes last in each arm
  classification=("task=sst2,trec,sst5,mr n_shot=1 $rows" "task=agnews task.demo_split=test n_shot=1 $rows")
  choice=("task=copa,winogrande,obqa n_shot=4 $rows"
          "task=hellaswag task.demo_split=validation n_shot=4 task.eval_limit=50 task.dev_size=20")
  # the arms in order of priority (a stream runs each arm over all its task groups before the next arm)
  arms=("experiment=study_baselines method=zero_shot optim.T=8"
        "experiment=study_ift optim.eta=0.1 optim.T=8"                                 # both position modes
        "experiment=study_ift optim.eta=0.01 optim.position_mode=continue optim.T=8"   # the paper's setting
        # the true gradient on the same cache, and the cosine between it and IFT's G (the pilot's setting:
        # 4 Adam updates at lr 0.01)
        "experiment=study_baselines method=grad ++method.lr=0.01 optim.T=5"
        "experiment=study_momentum optim.eta=0.1 optim.position_mode=aligned optim.T=8"   # beta = 0 (RQ4)
        # re-reading alone; 8 queries a batch (32 ran out of memory on HellaSwag's 4 x 1,300-token prefix beside a
        # second process; the batch size changes no number and no store key)
        "experiment=study_baselines method=repeat ++method.max_repeats=4 optim.T=8 eval.batch_size=8"
        "experiment=study_baselines method=more_demos ++method.max_factor=3 optim.T=8"
        "experiment=study_ift optim.eta=0.01 optim.position_mode=aligned optim.T=8"
        # T up to 15 where the dev rows chose the last steps of T = 8 (it continues the T = 8 run: steps 9-15)
        "experiment=study_ift optim.eta=0.01 optim.position_mode=aligned optim.T=15"
        "experiment=study_ift optim.eta=0.001 optim.position_mode=aligned optim.T=15")
  if [ $scale = nine-fp32 ]; then
    title="IFT against its baselines on nine benchmarks (bundled SmolLM2-135M, fp32)"
    common=(seed=0,1,2,3,4 quant=none "results_dir=$results" logger=disabled)
    # the default and the paper's settings continued to T = 15 (steps 9-15 of their T = 8 runs), as on Gemma: the
    # cross-model page's arms, so before the two step-size arms to T = 15, which the step-size page already has
    # (from its own archive, bf16-mixed)
    arms=("${arms[@]:0:8}"
          "experiment=study_ift optim.eta=0.1 optim.position_mode=aligned optim.T=15"
          "experiment=study_ift optim.eta=0.01 optim.position_mode=continue optim.T=15"
          "${arms[@]:8}")
  fi
  if [ $scale = eta ]; then
    # the step size, tuned to T = 15 in the default position mode, smallest first (the nine-task page lacks it),
    # then the paper's own setting (continue, eta 0.01) at the paper's T = 15; the same rows and keys as --nine,
    # so its ICL (step 1) must equal that page's
    title="The step size: IFT with eta 0.001, 0.01 and 0.1 up to T = 15 on nine benchmarks, and the paper's setting to T = 15 (bundled SmolLM2-135M, bf16-mixed)"
    arms=("experiment=study_ift optim.eta=0.001 optim.position_mode=aligned optim.T=15"
          "experiment=study_ift optim.eta=0.01 optim.position_mode=aligned optim.T=15"
          "experiment=study_ift optim.eta=0.1 optim.position_mode=aligned optim.T=15"
          "experiment=study_ift optim.eta=0.01 optim.position_mode=continue optim.T=15")
  fi
  headline=()
  declare -A repeats_of=()  # per task, a cap on the repetition arm's copies (default: the arm's own)
  declare -A zero_shot_only=()  # per task: only the zero-shot arm runs
  if [[ $scale = gemma* ]]; then
    # a base model of another family; the same rows, seeds and demonstrations recipe as --nine. Task by task
    # (cheapest first in each stream), so a stopped run leaves whole tasks: the headline arms first, the costlier
    # baselines in a second pass
    quant=${GEMMA_QUANT:-none}
    title="IFT against its baselines on nine benchmarks (Gemma-3-270m base, ${quant/none/fp32})"
    common=(model=gemma3_270m seed=0,1,2,3,4 "quant=$quant" "results_dir=$results" logger=disabled)
    classification=("task=sst2 n_shot=1 $rows" "task=mr n_shot=1 $rows" "task=sst5 n_shot=1 $rows"
                    "task=trec n_shot=1 $rows" "task=agnews task.demo_split=test n_shot=1 $rows")
    choice=("task=copa n_shot=4 $rows" "task=winogrande n_shot=4 $rows" "task=obqa n_shot=4 $rows"
            "task=hellaswag task.demo_split=validation n_shot=4 task.eval_limit=50 task.dev_size=20")
    # IFT to T = 8 on every task first, then the same runs continued to T = 15 (a longer run continues its
    # finished shorter one: steps 9-15 only), so a stopped study covers the most tasks
    headline=("experiment=study_baselines method=zero_shot optim.T=8"
              "experiment=study_ift optim.eta=0.1 optim.position_mode=aligned optim.T=8"
              "experiment=study_ift optim.eta=0.01 optim.position_mode=continue optim.T=8")
    arms=("experiment=study_ift optim.eta=0.1 optim.position_mode=aligned optim.T=15"
          "experiment=study_ift optim.eta=0.01 optim.position_mode=continue optim.T=15"
          "experiment=study_baselines method=grad ++method.lr=0.01 optim.T=5"
          "experiment=study_baselines method=repeat ++method.max_repeats=4 optim.T=8 eval.batch_size=8")
    # four copies of the demonstrations exceed Gemma's 512-token sliding window on some of seeds 0-4 of these
    # (check_lengths refuses the run): three fit every seed
    repeats_of=([sst5]=3 [trec]=3 [winogrande]=3)
    # HellaSwag's four demonstrations are 265-426 tokens on seeds 0-4: IFT's doubled cache exceeds the window on
    # every seed (and r = 2 copies with a query on most), so the Gemma page has its zero-shot arm only
    zero_shot_only=([hellaswag]=1)
    if [ $scale = gemma-agnews ]; then
      # AGNews from demonstrations of at most 300 characters: the same headline arms to T = 8 and gradient
      # tuning; no repetition, as two copies and the query exceed the window on 4 of seeds 0-4
      title="AGNews with demonstrations of at most 300 characters (Gemma-3-270m base, ${quant/none/fp32})"
      classification=("task=agnews task.demo_split=test n_shot=1 $rows +task.demo_max_chars=300") choice=()
      arms=("experiment=study_baselines method=grad ++method.lr=0.01 optim.T=5")
    fi
    if [ $scale = gemma-hellaswag ]; then
      # HellaSwag from demonstrations of at most 300 characters: the headline arms to T = 8, gradient tuning,
      # and repetition capped at 2 copies (2 copies and the longest query: 410-482 tokens on seeds 0-4)
      title="HellaSwag with demonstrations of at most 300 characters (Gemma-3-270m base, ${quant/none/fp32})"
      classification=()
      choice=("task=hellaswag task.demo_split=validation n_shot=4 task.eval_limit=50 task.dev_size=20 +task.demo_max_chars=300")
      arms=("experiment=study_baselines method=grad ++method.lr=0.01 optim.T=5"
            "experiment=study_baselines method=repeat ++method.max_repeats=4 optim.T=8 eval.batch_size=8")
      repeats_of=([hellaswag]=2) zero_shot_only=()
    fi
    if [ $scale = gemma-seeds ]; then
      # the seeds the Gemma page estimates for a +-3-point interval on IFT's delta where a binary task is wider:
      # COPA and WinoGrande to 8 (cheap, so first), then MR to 48 and SST-2 to 67 (the estimates moved as seeds
      # were added: their history is in docs/results.md; seeds 0-4 are --gemma's).
      # One queue of (task group, seed); each job runs every arm of --gemma (T = 8 runs, then continued to 15) for its seed
      seed_jobs=()
      for seed in 7 5 6; do seed_jobs+=("task=copa n_shot=4 $rows|$seed"); done  # 5 and 6 are done: 7 first
      for seed in 5 6 7; do seed_jobs+=("task=winogrande n_shot=4 $rows|$seed"); done
      # MR before SST-2: its estimate was the nearer one
      for seed in $(seq 5 47); do seed_jobs+=("task=mr n_shot=1 $rows|$seed"); done
      for seed in $(seq 5 66); do seed_jobs+=("task=sst2 n_shot=1 $rows|$seed"); done
      per_seed=()  # --gemma's settings without its seeds: each job names its own
      for setting in "${common[@]}"; do [[ $setting == seed=* ]] || per_seed+=("$setting"); done
    fi
  fi
  # the arm as it runs on a task group's task, into $run_arm: the task's cap on repetition copies applied;
  # fails (skip it) where the task runs zero-shot only
  arm_for() {
    local task=${2%% *}
    task=${task#task=}
    [[ -n "${zero_shot_only[$task]:-}" && $1 != *method=zero_shot* ]] && return 1
    run_arm=$1
    if [[ $1 == *method=repeat* && -n "${repeats_of[$task]:-}" ]]; then
      run_arm=${1/max_repeats=4/max_repeats=${repeats_of[$task]}}
    fi
  }
  # the launches over the task groups "$@" in order of priority, one "arm|group" item each, into $items:
  # --gemma's headline arms task group by task group, then every arm over all the groups before the next arm
  items_of() {
    local arm group run_arm
    items=()
    for group in "$@"; do
      for arm in "${headline[@]}"; do arm_for "$arm" "$group" && items+=("$run_arm|$group"); done
    done
    for arm in "${arms[@]}"; do
      for group in "$@"; do arm_for "$arm" "$group" && items+=("$run_arm|$group"); done
    done
    return 0
  }
  launch_item() {
    # shellcheck disable=SC2086
    launch ${1%|*} ${1#*|} "${common[@]}" "${extra[@]}"
  }
  stream() {
    local item status=0
    items_of "$@"
    for item in "${items[@]}"; do launch_item "$item" || status=1; done
    return $status
  }
  queue_next() {  # the shared queue's next index (the file $queue holds it), taken under a lock
    flock "$queue" sh -c 'n=$(cat "$1"); echo $((n + 1)) > "$1"; echo "$n"' _ "$queue"
  }
  item_worker() {  # takes the next launch of the shared queue until none is left
    local next status=0
    while :; do
      next=$(queue_next)
      [ "$next" -lt ${#items[@]} ] || break
      launch_item "${items[$next]}" || status=1
    done
    return $status
  }
  seed_worker() {  # takes the next job of the shared queue until none is left: a stop leaves whole seeds
    local next group seed arm run_arm
    while :; do
      next=$(queue_next)
      [ "$next" -lt ${#seed_jobs[@]} ] || break
      group=${seed_jobs[$next]%|*} seed=${seed_jobs[$next]#*|}
      for arm in "${headline[@]}" "${arms[@]}"; do
        arm_for "$arm" "$group" || continue
        # shellcheck disable=SC2086
        launch $run_arm $group "seed=$seed" "${per_seed[@]}" "${extra[@]}" || status=1
      done
    done
    return ${status:-0}
  }
  extra=("$@")
  if [ $scale = gemma-seeds ]; then
    queue=$(mktemp) && echo 0 > "$queue"
    workers=${NINE_PARALLEL:-2} pids=()
    threads=$(( $(nproc) / workers > 0 ? $(nproc) / workers : 1 ))
    for _ in $(seq "$workers"); do OMP_NUM_THREADS=$threads seed_worker & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    rm -f "$queue"
    NINE_STREAM=none
  fi
  case "${NINE_STREAM:-both}" in
    none) ;;
    classification) stream "${classification[@]}" || failed=1 ;;
    choice) stream "${choice[@]}" || failed=1 ;;
    both)
      if [ "${NINE_PARALLEL:-2}" = 2 ]; then
        # two workers on one queue of every task group's launches, so neither idles while the other has work
        # (two streams, one per task kind, left the classification one done hours before multiple choice)
        items_of "${classification[@]}" "${choice[@]}"
        queue=$(mktemp) && echo 0 > "$queue"
        threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
        OMP_NUM_THREADS=$threads item_worker & first=$!
        OMP_NUM_THREADS=$threads item_worker & second=$!
        wait $first || failed=1
        wait $second || failed=1
        rm -f "$queue"
      else
        stream "${classification[@]}" "${choice[@]}" || failed=1
      fi ;;
    *) echo "NINE_STREAM=${NINE_STREAM}: expected classification, choice or both" >&2; exit 2 ;;
  esac
elif [[ $scale = seeds* ]]; then
  quant=bf16_mixed
  [ $scale = seeds-fp32 ] && quant=none
  title="Many seeds: the default IFT setting against ICL and zero-shot (bundled SmolLM2-135M, ${quant/none/fp32})"
  title=${title/bf16_mixed/bf16-mixed}
  [ -n "${SEEDS_TASKS:-}" ] && title="$title: ${SEEDS_TASKS//,/, }"
  # the same rows and settings as --nine (--seeds-fp32: --nine-fp32), so its seeds 0-4 are the same runs:
  # copied in from that study's store or committed archive (reuse_from: same key), not run again
  nine=nine ; [ $scale = seeds-fp32 ] && nine=nine_fp32
  reuse=$(mktemp -d)/$nine && trap 'rm -rf "${reuse%/*}"' EXIT
  if [ -f "docs/results/$nine/runs.tar.gz" ]; then
    $PY -m analysis.archive unpack "docs/results/$nine/runs.tar.gz" "$reuse" >/dev/null
  fi
  same=("quant=$quant" "results_dir=$results" logger=disabled
        "reuse_from=[$(realpath -m "${NINE_RESULTS:-results/$nine}"),$reuse]")
  rows="task.eval_limit=100 task.dev_size=30"
  declare -A group_of=(
    [sst2]="seed=range(0,40) n_shot=1 $rows" [mr]="seed=range(0,40) n_shot=1 $rows"
    [sst5]="seed=range(0,15) n_shot=1 $rows"
    [trec]="seed=range(0,70) n_shot=1 $rows"
    [copa]="seed=range(0,10) n_shot=4 $rows" [obqa]="seed=range(0,10) n_shot=4 $rows"
    [agnews]="task.demo_split=test seed=range(0,10) n_shot=1 $rows"
    [winogrande]="seed=range(0,15) n_shot=4 $rows"
    [hellaswag]="task.demo_split=validation seed=range(0,10) n_shot=4 task.eval_limit=50 task.dev_size=20")
  for task in "${seeds_tasks[@]}"; do
    if [ -n "${SEEDS_TASKS:-}" ] && [[ ",$SEEDS_TASKS," != *",$task,"* ]]; then continue; fi
    group="task=$task ${group_of[$task]}"
    # shellcheck disable=SC2086
    launch experiment=study_ift optim.eta=0.1 optim.position_mode=aligned optim.T=8 $group "${same[@]}" "$@" \
      || failed=1
    # shellcheck disable=SC2086
    launch experiment=study_baselines method=zero_shot optim.T=8 $group "${same[@]}" "$@" || failed=1
  done
elif [ $scale = quick ]; then
  # one launch (one process, one model load): 2 tasks (binary classification, multiple choice; n_shot 2: the
  # gradient's leave-one-out loss needs 2 demonstrations) x 2 seeds, 8 eval and 4 dev rows, 3 steps; IFT with
  # and without momentum beside every baseline (a baseline's key ignores optim, so its beta=0 twin is skipped as
  # finished). ++ sets a method setting for every method of the sweep (each reads only its own)
  launch experiment=study_baselines method=ift,zero_shot,repeat,more_demos,grad optim=default,no_momentum \
      optim.position_mode=aligned task=sst2,copa n_shot=2 seed=0,1 task.eval_limit=8 task.dev_size=4 optim.T=3 \
      ++method.max_repeats=2 ++method.max_factor=2 "results_dir=$results" logger=disabled "$@"
else
  for preset in study_baselines study_ift study_momentum; do
    # classification (n_shot per class): the preset's own tasks, and AGNews, whose train split the local mirror
    # lacks (demonstrations and dev rows then come from its test split, never from the evaluated rows)
    launch experiment=$preset "results_dir=$results" "$@"
    launch experiment=$preset "results_dir=$results" task=agnews task.demo_split=test "$@"
    # multiple choice (n_shot in all; the leave-one-out gradient needs at least 2): HellaSwag likewise
    launch experiment=$preset "results_dir=$results" task=copa,obqa,winogrande n_shot=4 "$@"
    launch experiment=$preset "results_dir=$results" task=hellaswag task.demo_split=validation n_shot=4 "$@"
  done
fi
# the finished runs beside the page (no benchmark text, no checkpoints): the page is rebuilt from a clone with
# `python -m analysis.study $out/runs.tar.gz`, and the next run of this script restores them and skips them
# (a many-seeds subset packs and reports only its own tasks: the store is shared with the other subsets)
sources=("$results") only=()
# a seed-by-seed study packs whole seeds only (a seed a failed run left partial would drop the arms it lacks)
# (and its page is built from that archive: the store may hold a stopped seed's partial runs, whose arms the page
# would drop as incomplete)
if [ $scale = gemma-seeds ]; then only=(--whole-seeds copa,winogrande,sst2,mr) sources=("$out/runs.tar.gz"); fi
if [[ $scale = seeds* && -n "${SEEDS_TASKS:-}" ]]; then
  only=(--tasks "$SEEDS_TASKS") sources=()
  for task in ${SEEDS_TASKS//,/ }; do
    if [ -d "$results/$task" ]; then sources+=("$results/$task"); fi
  done
fi
# dry_run=true: every launch above said what each job would do (skip, copy in, resume, continue, run); nothing to
# pack or report
for arg in "$@"; do [ "$arg" = dry_run=true ] && exit ${failed:-0}; done
$PY -m analysis.archive pack "$results" "$out/runs.tar.gz" "${only[@]}"
# the fp32 nine-task page keeps the bf16-mixed page's T <= 8 in its headline while its runs are continued to
# T = 15 (the page's *Tuning longer* table sets steps 9-15 against it)
page_options=() ; [ $scale = nine-fp32 ] && page_options=(--max-step 8)
# --allow-missing: this script counts its failed jobs itself (below); the page lists them as skipped
$PY -m analysis.study "${sources[@]}" --out "$out" --allow-missing --title "$title" "${page_options[@]}"
# prose that quotes a page (docs/results.md, README) must be re-quoted when the page changes
$PY -m analysis.quotes check docs/results.md README.md >/dev/null ||
  echo "docs/results.md or README.md quotes numbers this page changed: python -m analysis.quotes update docs/results.md README.md, then read the words around them" >&2
exit ${failed:-0}  # a failed job (named in its sweep report) fails the script, after the page is written
