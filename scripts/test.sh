#!/usr/bin/env bash
# The test suite; arguments go to pytest (`make test-fast`: -m "not slow and not slurm", the unit tier).
# As root on a Debian-like machine (CI) it first installs SLURM and MariaDB with apt-get and starts a local
# single-node cluster (scripts/slurm/start-local-slurm.sh), so the real submitit sweep tests run; elsewhere,
# with IFT_SKIP_SLURM=1, or with a marker expression that leaves out `slurm`, those tests skip. Daemons this
# script started are stopped again when it ends; a cluster that was already running is left running
# (stop it with `make slurm-stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
export IFT_DATA_DIR=${IFT_DATA_DIR:-$(cd .. && pwd)/shared/data}
export WANDB_MODE=${WANDB_MODE:-offline}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

wants_slurm=1
[ "${IFT_SKIP_SLURM:-0}" = 1 ] && wants_slurm=0
for arg in "$@"; do
  case "$arg" in *"not slurm"*) wants_slurm=0 ;; esac
done
if [ "$wants_slurm" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  ctld=/run/slurm-local/slurmctld.pid
  already=0
  [ -s "$ctld" ] && kill -0 "$(cat "$ctld")" 2>/dev/null && already=1
  if bash scripts/slurm/start-local-slurm.sh; then
    export IFT_SLURM=1
    [ "$already" = 1 ] || trap 'bash scripts/slurm/stop-local-slurm.sh >/dev/null' EXIT
  else
    echo "SLURM could not start; slurm tests will skip"
  fi
fi
# lint first (seconds): an unused import or undefined name fails here, not in review
.venv/bin/ruff check --quiet .
.venv/bin/python -m pytest -q "$@"
