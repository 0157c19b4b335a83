"""wandb for one job: offline unless asked, never fatal.

The results store is the record that must not be lost; wandb is a view of it. So a wandb that cannot
start online falls back to offline (`wandb sync` later), and any wandb error after that only turns
tracking off with a warning. One run per job, `finish()` at its end, so Hydra multiruns in one process
stay separate runs.
"""
from __future__ import annotations

import logging
import warnings

from ift.experiment.config import LoggerConfig

log = logging.getLogger(__name__)


def flat_step(row: dict) -> dict:
    """A steps.jsonl row for wandb: per-layer lists become scalars `grad_norm_k/<layer>`."""
    out = {}
    for key, value in row.items():
        if isinstance(value, list):
            out.update({f"{key}/{i}": v for i, v in enumerate(value)})
        elif value is not None:
            out[key] = value
    return out


class Tracker:
    def __init__(self, cfg: LoggerConfig, run_dir, name: str, config: dict, job_type: str = "tune"):
        self.run = None
        if cfg.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            warnings.warn("wandb is not installed: tracking only to the local results store", stacklevel=2)
            return
        kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group, name=name, dir=str(run_dir),
                      config=config, job_type=job_type, tags=cfg.tags or None,
                      settings=wandb.Settings(init_timeout=cfg.init_timeout, console="off"))
        try:
            self.run = wandb.init(mode=cfg.mode, **kwargs)
        except Exception as err:  # noqa: BLE001 - network, auth, server: none of them may stop the job
            if cfg.mode != "online":
                log.warning("wandb could not start (%s): tracking only to the local results store", err)
                return
            log.warning("wandb could not start online (%s); logging offline instead: `wandb sync %s/wandb` later",
                        err, run_dir)
            try:
                self.run = wandb.init(mode="offline", **kwargs)
            except Exception as err2:  # noqa: BLE001
                log.warning("wandb could not start offline either (%s): tracking only to the results store", err2)

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def directory(self) -> str | None:
        return getattr(self.run, "dir", None) if self.run is not None else None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb %s failed (%s): tracking goes on in the local results store only", what, err)
            self.run = None

    def log_step(self, row: dict) -> None:
        self._call("log", lambda: self.run.log(flat_step(row), step=int(row["step"])))

    def log_row(self, row: dict) -> None:
        self._call("log", lambda: self.run.log(flat_step(row)))

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        if self.run is None:
            return
        if summary:
            self._call("summary", lambda: self.run.summary.update({k: v for k, v in summary.items() if v is not None}))
        run, self.run = self.run, None
        try:
            run.finish(exit_code=1 if failed else 0)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb finish failed (%s); the local results store is complete", err)
