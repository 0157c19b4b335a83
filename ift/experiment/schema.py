"""The typed config nodes (dataclasses) and the job they compose into, registered as Hydra structured configs.

The defaults of every typed node live here and only here (IFT's come from ift/settings.py): Hydra composes
conf/ onto these dataclasses (registered below, so a wrong type fails at composition, naming its key), and
`typed` fills a plain dict's missing keys from them. Ranges and cross-field rules are ift/experiment/config.py's.
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path

import ift.experiment.controls  # noqa: F401 - registers the control methods before register_configs() below
from ift.experiment.checks import ConfigError
from ift.experiment.keys import config_hash
from ift.experiment.methods import REGISTRY, Ift, Method
from ift.models import resolve_device
from ift.settings import STUDY_DEFAULT


@dataclass
class ModelConfig:
    name: str         # short label in results and reports, e.g. "opt-1.3b"
    source: str       # "bundled", a hub id, a local HF directory or a .gguf file
    dtype: str = "fp32"
    quant: str = "none"
    trust_remote_code: bool = False


@dataclass
class OptimConfig:
    """IFT's optimiser; defaults: the study default (ift.settings.STUDY_DEFAULT, conf/optim/default.yaml).
    The paper's: conf/optim/paper.yaml."""

    eta: float = STUDY_DEFAULT.eta    # step size η of K̃ₜ = K̃ₜ₋₁ + η·M
    beta: float = STUDY_DEFAULT.beta  # momentum β of M = G + β·M (M starts as the first G)
    T: int = STUDY_DEFAULT.T          # tuning steps; evaluation after each, step 1 = plain ICL
    position_mode: str = STUDY_DEFAULT.position_mode  # auto: aligned, or continue for ALiBi; continue: re-read at L..2L-1
    patience: int | None = None  # early stopping on the dev accuracy (ift and grad); None: run all T steps


@dataclass
class EvalConfig:
    batch_size: int = 32          # queries per forward pass (results do not depend on it)
    save_predictions: bool = False  # also write per-example predictions for every step
    save_prefix: bool = True      # keep the last tuned prefix: resume checkpoint, reusable (TunedPrefix.load)
    progress: bool = True         # tqdm bars while scoring


@dataclass
class QuantConfig:
    dtype: str = "fp32"    # fp32 | fp16 | bf16 | bf16-mixed | auto (compute dtype for int8/nf4; auto: resolved)
    method: str = "none"   # none | int8 | nf4


@dataclass
class EfficiencyConfig:
    """mode=efficiency (experiment=rq2_efficiency): ICL against the tuned prefix, per query."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])  # measured on CPU
    max_batch_limit: int = 4096   # upper end of the GPU search (past n_examples: repeats); reached = `capped`
    n_examples: int = 256         # evaluation examples scored per measurement
    search: bool | None = None    # null: search on GPU only; true/false forces it


@dataclass
class LoggerConfig:
    mode: str = "offline"
    project: str = "ift"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0
    log_artifacts: bool = False  # the tuned prefix and predictions as a wandb Artifact (size: the K/V cache)


@dataclass
class JobConfig:
    mode: str
    seed: int
    n_shot: int
    device: str
    model: ModelConfig
    task: dict                  # spec keys for ift.tasks.load_task (+ optional `file`: a task YAML path)
    optim: OptimConfig
    logger: LoggerConfig
    results_dir: Path
    batch_size: int = 32
    save_predictions: bool = False
    save_prefix: bool = True    # keep the last tuned prefix (also the resume checkpoint)
    progress: bool = True
    skip_finished: bool = True
    reuse_from: tuple[Path, ...] = ()  # other stores whose ended runs of the same key are copied in, not re-run
    dry_run: bool = False       # say what the job would do (`run_job`'s plan) and compute nothing
    check_machine_kind: bool = True  # refuse a low-precision run beside its seed's runs from another machine kind
    efficiency: dict = field(default_factory=dict)
    method: Method = field(default_factory=Ift)  # ift/experiment/methods.py
    # what the opened task contributes to the key: {task: resolved spec, data: fingerprint, demonstrations: text}
    # (`bind`); empty until the task is opened, and then the config's `task` node stands in for it
    content: dict = field(default_factory=dict)
    hash: str = ""

    @property
    def task_name(self) -> str:
        """The task's name in the store and in analysis. A harness task is `lmeval-<name>`: its prompt is the
        harness's, so its runs must never be pooled with the built-in task of the same name."""
        name = str(self.task.get("name") or Path(str(self.task.get("file", "task"))).stem)
        return f"lmeval-{name}" if self.task.get("source") == "lmeval" else name

    def identity(self) -> dict:
        """What determines the numbers a job produces, and so its results-store key (`config_hash`).

        Run-only keys (logger, batch size, progress, output directories) stay out; the device enters as its
        kind when it is not the CPU. Before `bind`, the
        task is the config's `task` node; after it, the task's content: the resolved spec, a fingerprint of
        the data files and the demonstration text, so editing a task YAML or its data gives a new key.
        """
        ident = {"mode": self.mode, "seed": self.seed, "n_shot": self.n_shot,
                 "model": {k: v for k, v in asdict(self.model).items() if k != "name"},
                 **self.method.identity(self.optim)}
        if self.mode == "efficiency":
            ident["efficiency"] = self.efficiency
        kind = resolve_device(self.device).type
        if kind != "cpu":  # a GPU run is not its CPU twin (other bits, other RQ2 costs); CPU keys stay as they were
            ident["device"] = kind
        if self.content:
            ident.update(task=self.content["task"], data=self.content["data"],
                         demonstrations=self.content["demonstrations"])
        else:
            ident["task"] = self.task
        return ident

    def bind(self, task: dict, data: dict, demonstrations: str) -> JobConfig:
        """Key the job by what the opened task holds (see `identity`); sets `hash`, the results-store key."""
        self.content = {"task": task, "data": data, "demonstrations": demonstrations}
        self.hash = config_hash(self.identity())
        return self


SCHEMAS = {"optim": OptimConfig, "eval": EvalConfig, "logger": LoggerConfig, "quant": QuantConfig,
           "efficiency": EfficiencyConfig}


def register_configs() -> None:
    """The typed nodes as Hydra structured configs: `schema/<node>` (conf/config.yaml's defaults list puts each
    under its node, before the YAML that sets it). Called on import of the experiment layer."""
    try:
        from hydra.core.config_store import ConfigStore
    except ImportError:  # plain dicts need no Hydra
        return
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group=f"schema/{name}", name="base", node=schema)
    for name, cls in REGISTRY.items():  # conf/method/<name>.yaml extends schema/method/<name>
        store.store(group="schema/method", name=name, node=method_schema(cls))


def method_schema(cls: type[Method]) -> type:
    """A method's config node as a dataclass: `_target_` and `name`, then its settings with the class's defaults
    (the one place they are set), typed, so that `method.max_repeats=x` fails while composing."""
    hints = typing.get_type_hints(cls)
    return make_dataclass(f"{cls.__name__}Node", [
        ("_target_", str, field(default=f"{cls.__module__}.{cls.__qualname__}")),
        ("name", str, field(default=cls.name)),
        *((f.name, hints[f.name], field(default=f.default)) for f in fields(cls))])


register_configs()


def typed(node, name: str) -> dict:
    """A config node on its dataclass (SCHEMAS): missing keys take the dataclass default, values its type.

    A composed config is already typed by Hydra; a plain dict (run_job({...})) is typed here, the same way."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if node is not None and not isinstance(node, dict):
        raise ConfigError(f"{name} must be a mapping, got {node!r}")
    try:
        return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(SCHEMAS[name]), node or {}))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        raise ConfigError(f"{name}.{key}: {str(err).splitlines()[0]}") from None
