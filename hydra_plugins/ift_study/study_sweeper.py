"""The study sweeper, Hydra's plugin for `hydra/sweeper=study` (conf/hydra/sweeper/study.yaml; Hydra loads
sweepers from the hydra_plugins namespace only). What a study plans is ift/experiment/study_plan.py's."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf, open_dict

from ift.experiment.study_plan import _plain, plan

log = logging.getLogger(__name__)


class StudySweeper(Sweeper):
    """Hydra's Sweeper for a study preset (module docstring). The study's page settings (title, page, ...)
    are read by `python -m analysis.studies`, not here."""

    def __init__(self, sweeps, groups=None, max_batch_size=None, tasks=None, arms=None, skip_ended=True,
                 **study) -> None:
        super().__init__()
        self.skip_ended = skip_ended
        self.sweeps = _plain(sweeps) or []
        self.groups = _plain(groups) or {}
        self.max_batch_size = max_batch_size
        self.tasks = list(_plain(tasks)) if tasks is not None else None
        self.arms = list(_plain(arms)) if arms is not None else None
        self.study = _plain(study)  # title, page, ...: the page's settings (analysis.studies)
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def batches(self, arguments: Sequence[str]) -> list[tuple[str, list[list[str]]]]:
        """The launcher batches: each named sweep's jobs, in chunks of max_batch_size."""
        size = self.max_batch_size
        out = []
        for name, jobs in plan(self.sweeps, self.groups, arguments, self.tasks, self.arms):
            step = size if size and size > 0 else max(len(jobs), 1)
            out += [(name, jobs[i:i + step]) for i in range(0, len(jobs), step)]
        return out

    def sweep(self, arguments: list[str]) -> Any:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        batches = self.batches(arguments)
        total = sum(len(jobs) for _, jobs in batches)
        log.info("study: %d job(s) in %d batch(es): %s", total, len(batches),
                 ", ".join(f"{name} ({len(jobs)})" for name, jobs in batches))
        returns, index, skipped = [], 0, 0
        check = self.skip_ended and self._store_has_ended_runs()  # once: the batches' jobs are distinct
        for name, jobs in batches:
            jobs, ended = self._to_launch(jobs, sweep_dir, skipped) if check else (jobs, 0)
            skipped += ended
            if not jobs:
                log.info("study sweep %r: every job already ended, none launched", name)
                continue
            self.validate_batch_is_legal(jobs)
            log.info("study sweep %r: jobs %d-%d of %d", name, index, index + len(jobs) - 1, total)
            results = self.launcher.launch(jobs, initial_job_idx=index)
            for result in results:
                _ = result.return_value  # as Hydra's BasicSweeper: a job's exception ends the study here
            index += len(jobs)
            returns.append(results)
        return returns

    def _store_has_ended_runs(self) -> bool:
        """Whether the study's results store holds any ended run (a summary.json): on a first launch, with none,
        no job's checks are made here (≈ 0.5 s a job, minutes for a large study)."""
        from ift.experiment.config import results_root
        from ift.experiment.layout import SUMMARY_FILE

        root = results_root(self.config, Path(str(self.config.hydra.runtime.cwd)))
        return root.is_dir() and next(root.rglob(SUMMARY_FILE), None) is not None

    def _to_launch(self, jobs: list[list[str]], sweep_dir: Path, done: int) -> tuple[list[list[str]], int]:
        """The batch without the jobs whose store key already ended (`skip_ended`; each gets its job.json under
        sweep_dir/ended-N for the sweep report), and how many those were: a restart launches only what computes."""
        from ift.experiment.hydra_app import record_skipped
        from ift.experiment.job import ended_already

        cwd = str(self.config.hydra.runtime.cwd)
        keep, ended = [], 0
        for overrides in jobs:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                del cfg["hydra"]
            result = ended_already(cfg, base_dir=cwd)
            if result is None:
                keep.append(overrides)
            else:
                ended += 1
                record_skipped(sweep_dir / f"ended-{done + ended}", overrides, result)
        if ended:
            log.info("study: %d of %d job(s) already ended with this config, not launched", ended, len(jobs))
        return keep, ended
