"""The experiment layer: what `launch.py` runs for each Hydra job.

Only this package (and launch.py) imports Hydra, wandb and submitit; the engine in `ift/` stays a plain
library. `run_job(cfg)` takes a composed config (an OmegaConf node or a plain dict with the same keys),
so a notebook can run a job without Hydra too.

The names below are imported on first use (PEP 562), so that `ift.experiment.methods` (which the analysis
reads for the methods' metadata) imports without Hydra or wandb installed.
"""
import importlib

_LAZY = {"ConfigError": "config", "JobConfig": "config", "config_hash": "config", "parse_config": "config",
         "run_job": "job"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"ift.experiment.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ift.experiment' has no attribute {name!r}")
