"""The experiment layer: what `launch.py` runs for each Hydra job.

Only this package (and launch.py) imports Hydra, wandb and submitit; the engine in `ift/` stays a plain
library. `run_job(cfg)` takes a composed config (an OmegaConf node or a plain dict with the same keys),
so a notebook can run a job without Hydra too.
"""
from ift.experiment.config import ConfigError, JobConfig, config_hash, parse_config
from ift.experiment.job import run_job

__all__ = ["ConfigError", "JobConfig", "config_hash", "parse_config", "run_job"]
