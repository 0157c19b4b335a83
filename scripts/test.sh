#!/usr/bin/env bash
# The whole test suite. Starts a local single-node SLURM cluster first when we are root on a
# Debian-like machine (CI), so the real submitit sweep test runs; elsewhere those tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export IFT_DATA_DIR=${IFT_DATA_DIR:-$(cd .. && pwd)/shared/data}
export WANDB_MODE=${WANDB_MODE:-offline}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${IFT_SKIP_SLURM:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/slurm/start-local-slurm.sh && export IFT_SLURM=1 || echo "SLURM could not start; slurm tests will skip"
fi
.venv/bin/python -m pytest -q "$@"
