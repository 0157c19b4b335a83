"""wandb for one job: one run per job, readable in the UI, offline unless asked, never fatal.

The results store is the record that must not be lost; wandb is a view of it. So a wandb that cannot
start online falls back to offline (`python -m analysis.sync` later), and any wandb error after that only
turns tracking off with a warning.

The contract (docs/experiments.md, "wandb"; tested in tests/test_tracking.py on real offline runs):
- id: derived from the job's store directory (results_dir + config hash), `resume="allow"`: a requeued,
  resumed or re-launched job is the same run. Group: one per sweep (`<preset or swept keys>-<sweep dir>`).
  Name: the job's values of the swept keys, else its overrides (Hydra's `override_dirname`), else
  `<task>-<model>-<hash8>`.
  Tags: task, model, method, position mode, the preset and its research question.
- config: the job's inputs only (meta.json without its run state, the resolved config, the store path);
  status, error and outcomes live in the summary.
- history: every per-step key against the tuning step (`define_metric(step_metric="step")`); the per-layer
  ‖G‖ scalars are kept (analysis reads them back) but hidden from the automatic charts, and the layer ×
  step matrix is logged at the end as the table `grad_norms` and the image `grad_norm_heatmap`.
- finish: the run's history ends equal to the store's steps.jsonl (steps an earlier attempt kept are
  logged again), then the summary (ICL, best on eval, dev-chosen step, diverged, status) and, with
  `logger.log_artifacts=true`, the tuned prefix and predictions as an Artifact.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from pathlib import Path

from ift.experiment.config import JobConfig, LoggerConfig

log = logging.getLogger(__name__)

STEP = "step"
PER_LAYER = ("grad_norm_k", "grad_norm_v")
NORM_TABLE, NORM_IMAGE, EFFICIENCY_TABLE = "grad_norms", "grad_norm_heatmap", "efficiency"
# meta.json keys that describe an attempt, not the job's inputs: never in the wandb config
RUN_STATE = ("status", "error", "started", "finished", "attempts", "host", "slurm_job_id", "continued_from",
             "lengths", "pseudo_grad_cosine")
# how each per-step key sums up a run in the wandb summary (wandb's default is the last value)
STEP_SUMMARY = {"peak_mem_mb": "max", "time_s": "mean", "tune_s": "mean"}
# the research questions each preset's runs answer (analysis.dashboard filters its views on them); rqN_*
# presets name theirs. study_ift's β = 0.9 runs are RQ4's other arm, beside study_momentum's β = 0
PRESET_RQ = {"study_ift": ["rq1", "rq3", "rq4"], "study_baselines": ["rq1"], "study_momentum": ["rq4"]}
SUMMARY_KEYS = ("icl_acc", "icl_acc_norm", "best_eval_step", "best_eval_acc", "dev_step", "dev_step_acc",
                "last_step", "stopped_early", "status", "diverged", "error")


def flat_step(row: dict) -> dict:
    """A steps.jsonl row for wandb: per-layer lists become scalars `grad_norm_k/<layer>`."""
    out = {}
    for key, value in row.items():
        if isinstance(value, list):
            out.update({f"{key}/{i}": v for i, v in enumerate(value)})
        elif value is not None:
            out[key] = value
    return out


def run_id(store_path: Path) -> str:
    """The wandb run id of a job: its store directory (results_dir/task/model/<config hash>) hashed, so
    every attempt of one job in one results store is one run, and the same job in another store is not."""
    return hashlib.sha256(str(Path(store_path).resolve()).encode()).hexdigest()[:16]


def hydra_context() -> dict:
    """What Hydra knows about the running job ({} outside Hydra): multirun or not, the sweep directory,
    the job's own overrides (`override_dirname`, conf/config.yaml says which keys it leaves out) and the
    experiment preset."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return {}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = dict(hc.runtime.choices or {})
    multirun = hc.mode == RunMode.MULTIRUN
    return {"multirun": multirun, "sweep_dir": str(hc.sweep.dir),
            "override_dirname": str(hc.job.override_dirname or ""), "experiment": choices.get("experiment"),
            "overrides": list(hc.overrides.task), "swept": swept_keys(hc.sweep.dir) if multirun else []}


def swept_keys(sweep_dir) -> list[str]:
    """The keys a sweep varies: its sweeper params (a preset's) and its command-line sweep overrides
    (`optim.eta=0.1,0.01`), read from the `multirun.yaml` Hydra's sweeper writes first; [] if unreadable."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra
        parsed = OverridesParser.create().parse_overrides([str(o) for o in cfg.overrides.task])
        keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
        return list(dict.fromkeys([*keys, *(cfg.sweeper.get("params") or {})]))
    except Exception as err:  # noqa: BLE001 - a name is not worth failing for
        log.debug("no swept keys from %s: %s", sweep_dir, err)
        return []


def run_name(ctx: dict, fallback: str) -> str:
    """The job's values of the swept keys (`optim.eta=0.1,task=sst2`), else all its overrides (Hydra's
    override_dirname, minus the keys conf/config.yaml excludes), else `fallback`."""
    swept = set(ctx.get("swept") or [])
    mine = [o.lstrip("+~") for o in ctx.get("overrides", []) if o.lstrip("+~").split("=", 1)[0] in swept]
    return (",".join(sorted(mine)) or ctx.get("override_dirname") or fallback)[:128]


def sweep_group(ctx: dict) -> str:
    """One readable, unique group per sweep: `<preset or swept keys>-<date_time of the sweep dir>-<6 hex>`.

    The hex digest is of the absolute sweep directory, so two sweeps started in the same second elsewhere
    differ, and a requeued job of the same sweep (same directory) stays in its group."""
    sweep = Path(ctx["sweep_dir"]).resolve()
    label = ctx.get("experiment") or "+".join(sorted(ctx.get("swept") or [])) or "sweep"
    parts = sweep.parts[-2:]
    stamp = "_".join(parts) if len(parts) == 2 and re.fullmatch(r"\d{4}-\d\d-\d\d", parts[0]) else sweep.name
    digest = hashlib.sha256(str(sweep).encode()).hexdigest()[:6]
    return f"{label}-{stamp}-{digest}"[:128]


def research_questions(preset: str | None) -> list[str]:
    if not preset:
        return []
    if preset in PRESET_RQ:
        return PRESET_RQ[preset]
    m = re.match(r"(rq\d+)", preset)
    return [m.group(1)] if m else []


def job_tags(meta: dict, preset: str | None, extra) -> list[str]:
    """task, model, method, position mode (IFT), mode (efficiency), preset and its RQ; ≤ 64 characters each."""
    tags = [f"task:{meta.get('task')}", f"model:{meta.get('model')}", f"method:{meta.get('method')}"]
    if meta.get("position_mode"):
        tags.append(f"position:{meta['position_mode']}")
    if meta.get("mode") == "efficiency":
        tags.append("mode:efficiency")
    if preset:
        tags.append(f"experiment:{preset}")
    tags += research_questions(preset)
    return list(dict.fromkeys(t[:64] for t in [*tags, *(extra or [])]))


def job_config(meta: dict, resolved: dict | None, store_path: Path) -> dict:
    """The wandb config: the job's inputs (meta.json minus the attempt's state), its resolved config and store."""
    inputs = {k: v for k, v in meta.items() if k not in RUN_STATE}
    return {**inputs, "config": resolved or {}, "store": str(store_path)}


class Tracker:
    """One wandb run for one job. `for_job` derives everything from the job; `Tracker(cfg, ...)` is the
    plain constructor (run_dir, name, config, job_type and the optional id/group/tags)."""

    def __init__(self, cfg: LoggerConfig, run_dir, name: str, config: dict, job_type: str = "tune",
                 run_id: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 store=None):
        self.run = None
        self.cfg, self.store, self.mode = cfg, store, job_type
        self.logged: set[int] = set()       # steps this run holds (on an online resume: the server's too)
        self.norms: dict[int, dict] = {}    # step -> {grad_norm_k: [...], grad_norm_v: [...]}
        self.efficiency: list[dict] = []
        if cfg.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            warnings.warn("wandb is not installed: tracking only to the local results store", stacklevel=2)
            return
        if wandb.run is not None:  # a job of this process stopped without finishing its run (killed)
            log.warning("finishing the wandb run %s left open by an interrupted job", wandb.run.id)
            try:
                wandb.run.finish(exit_code=1)
            except Exception as err:  # noqa: BLE001
                log.warning("could not finish it (%s)", err)
        kwargs = dict(project=cfg.project, entity=cfg.entity, group=group or cfg.group, name=name,
                      dir=str(run_dir), config=config, job_type=job_type, tags=tags or cfg.tags or None,
                      id=run_id, resume="allow" if run_id else None,
                      settings=wandb.Settings(init_timeout=cfg.init_timeout, console="off"))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(mode=cfg.mode, **kwargs)
        except Exception as err:  # noqa: BLE001 - network, auth, server: none of them may stop the job
            if cfg.mode != "online":
                log.warning("wandb could not start (%s): tracking only to the local results store", err)
                return
            try:  # the failed online attempt still holds the run id in wandb's service: shut it down first
                wandb.teardown()
                self.run = wandb.init(mode="offline", **kwargs)
            except Exception as err2:  # noqa: BLE001
                log.warning("wandb could not start online (%s) nor offline (%s): this job has no wandb copy; the "
                            "results store has everything, rebuild the copy from it later with `python -m "
                            "analysis.sync --from-store %s`", _first_line(err), _first_line(err2),
                            store.path if store is not None else "<job directory>")
                self.run = None
                return
            log.warning("wandb could not start online (%s); logging offline instead: `python -m analysis.sync %s` "
                        "later", _first_line(err), run_dir)
        self._call("define_metric", self._define_metrics)
        if self.run is not None and getattr(self.run, "resumed", False):  # online resume: the server has these
            last = self.run.summary.get(STEP)
            if isinstance(last, (int, float)):
                self.logged.update(range(1, int(last) + 1))

    @classmethod
    def for_job(cls, job: JobConfig, store, output_dir=None, resolved: dict | None = None) -> Tracker:
        """The run of `job`, whose store has begun (meta.json written): id from the store directory, group
        from the sweep, name from the job's overrides, tags and config from its meta (see the module doc)."""
        try:
            meta = store.meta()
            ctx = hydra_context()
            group = job.logger.group or (sweep_group(ctx) if ctx.get("multirun") else ctx.get("experiment"))
            name = run_name(ctx, f"{job.task_name}-{job.model.name}-{job.hash[:8]}")
            tags = job_tags(meta, ctx.get("experiment"), job.logger.tags)
            config = job_config(meta, resolved, store.path)
        except Exception as err:  # noqa: BLE001 - naming a run must never stop a job
            log.warning("wandb run naming failed (%s): tracking only to the local results store", err)
            return cls(LoggerConfig(mode="disabled"), store.path, "", {})
        return cls(job.logger, Path(output_dir or store.path), name, config, job.mode,
                   run_id=run_id(store.path), group=group, tags=tags, store=store)

    # ---------------------------------------------------------------- plumbing
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

    def _define_metrics(self) -> None:
        run = self.run
        if self.mode == "efficiency":  # RQ2: one row per (method, batch size); charts per method vs batch
            run.define_metric("batch_size")
            run.define_metric("*", step_metric="batch_size")
            for key in ("method", "queries_per_s", "tokens_per_query", "peak_mem_mb", "max_batch", "device"):
                run.define_metric(key, step_metric="batch_size", hidden=True)  # per-method keys are charted
            return
        run.define_metric(STEP)
        run.define_metric("*", step_metric=STEP)
        for key, how in STEP_SUMMARY.items():
            run.define_metric(key, step_metric=STEP, summary=how)
        for key in PER_LAYER:  # one panel (the heatmap) instead of one chart per layer
            run.define_metric(f"{key}/*", step_metric=STEP, hidden=True)

    # ---------------------------------------------------------------- logging
    def log_step(self, row: dict) -> None:
        """One steps.jsonl row against its tuning step (once per step: an online resume skips the server's)."""
        step = int(row[STEP])
        layers = {k: row[k] for k in PER_LAYER if isinstance(row.get(k), list)}
        if layers:
            self.norms[step] = layers
        if self.run is None or step in self.logged:
            return
        self._call("log", lambda: self.run.log(flat_step(row)))
        self.logged.add(step)

    def log_row(self, row: dict) -> None:
        """One efficiency.jsonl row: the raw keys (read back by analysis) and `<method>/<key>` to chart."""
        self.efficiency.append(row)
        method = row.get("method", "row")
        per_method = {f"{method}/{k}": v for k, v in row.items()
                      if k not in ("method", "device", "batch_size") and v is not None}
        self._call("log", lambda: self.run.log({**flat_step(row), **per_method}))

    def finish(self, summary: dict | None = None, status: str = "finished", error: str | None = None) -> None:
        """End the run: the store's steps the run has not shown, the norm table and heatmap, the summary
        (with `status` and `diverged`), the artifact if asked, and wandb's exit code (1 when failed)."""
        if self.run is None:
            return
        if self.store is not None:
            self._call("log", self._catch_up)
            self._call("config", self._resolved_inputs)
        if self.norms:
            self._call("norm table", self._log_norms)
        if self.efficiency:
            self._call("efficiency table", lambda: self.run.log(
                {EFFICIENCY_TABLE: _table(self.efficiency)}))
        final = {**(summary or {}), "status": status, "diverged": status == "diverged"}
        if error:
            final["error"] = error
        self._call("summary", lambda: self.run.summary.update(final))  # null stays: every run has the same keys
        if self.cfg.log_artifacts and status != "failed" and self.store is not None:
            self._call("artifact", self._log_artifact)
        run, self.run = self.run, None
        try:
            run.finish(exit_code=1 if status == "failed" else 0)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb finish failed (%s); the local results store is complete", err)

    def _catch_up(self) -> None:
        """Steps the store kept from an earlier attempt that this run has not logged (a job that failed
        before resuming): the run's history ends equal to steps.jsonl."""
        if self.mode != "tune":
            return
        for row in self.store.steps():
            if int(row[STEP]) not in self.logged:
                self.log_step(row)

    def _resolved_inputs(self) -> None:
        """position_mode=auto becomes the mode that ran once the model is loaded: config and tags follow."""
        meta = self.store.meta()
        mode = meta.get("position_mode")
        if mode and self.run.config.get("position_mode") != mode:
            self.run.config.update({"position_mode": mode}, allow_val_change=True)
            self.run.tags = tuple(t for t in self.run.tags if not t.startswith("position:")) + (f"position:{mode}",)

    def _log_norms(self) -> None:
        import wandb

        steps = sorted(self.norms)
        rows = [[s, layer, *(self.norms[s].get(k, [None] * (layer + 1))[layer] for k in PER_LAYER)]
                for s in steps for layer in range(max(len(v) for v in self.norms[s].values()))]
        payload = {NORM_TABLE: wandb.Table(columns=[STEP, "layer", *PER_LAYER], data=rows)}
        image = norm_heatmap(self.norms)
        if image is not None:
            payload[NORM_IMAGE] = wandb.Image(image, caption="per-layer ‖G‖ (K and V) × tuning step")
        self.run.log(payload)

    def _log_artifact(self) -> None:
        import wandb

        files = [self.store.file(n) for n in ("prefix.safetensors", "predictions.jsonl", "summary.json")]
        files = [f for f in files if f.exists()]
        if not any(f.name != "summary.json" for f in files):
            return
        artifact = wandb.Artifact(f"prefix-{self.run.id}", type="tuned-prefix",
                                  metadata={k: self.run.config.get(k) for k in ("task", "model", "eta", "beta", "T")})
        for f in files:
            artifact.add_file(str(f))
        self.run.log_artifact(artifact)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _table(rows: list[dict]):
    import wandb

    columns = list(dict.fromkeys(k for r in rows for k in r))
    return wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])


def norm_heatmap(norms: dict[int, dict]):
    """The layer × step ‖G‖ matrix of K and V as one PNG (PIL image), the paper's Fig. 5 for one run."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import numpy as np
        from PIL import Image
    except ImportError:
        return None
    steps = sorted(norms)
    fig, axes = plt.subplots(1, len(PER_LAYER), figsize=(4 + 0.25 * len(steps), 3.5), squeeze=False)
    for ax, key in zip(axes[0], PER_LAYER):
        matrix = np.array([norms[s].get(key) or [] for s in steps], dtype=float).T  # layers × steps
        if matrix.size == 0:
            ax.set_axis_off()
            continue
        im = ax.imshow(matrix, aspect="auto", origin="lower", cmap="viridis",
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, matrix.shape[0] - 0.5))
        ax.set(title=f"‖G‖ {key[-1].upper()}", xlabel="tuning step", ylabel="layer")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf)
