"""A composed Hydra config checked and turned into a typed `JobConfig`, before anything heavy happens.

Every check names the config field and its valid values, so `optim.eta=-1` fails in milliseconds
instead of after a model download. `config_hash(job.identity())` keys the results store: two jobs that
would compute the same numbers have the same hash, whatever their logger, batch size or output directory.
The key is final once `JobConfig.bind` has added what the opened task holds (its resolved spec, a
fingerprint of its data files and the demonstration text; ift.experiment.job.prepare does this).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path

import ift.experiment.controls  # noqa: F401 - registers the control methods (issue 42)
from ift.experiment.methods import REGISTRY, Ift, Method
from ift.models import DTYPE_CHOICES, NAMED_SOURCES, QUANTS, check_options, fast_dtype, resolve_device
from ift.tuner import POSITION_MODE_CHOICES

MODES = ("tune", "efficiency")
METHODS = tuple(REGISTRY)  # ift/experiment/methods.py: ift, zero_shot, repeat, more_demos, grad; controls.py
LOGGER_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


@dataclass
class ModelConfig:
    name: str         # short label in results and reports, e.g. "opt-1.3b"
    source: str       # "bundled", a hub id, a local HF directory or a .gguf file
    dtype: str = "fp32"
    quant: str = "none"
    trust_remote_code: bool = False


# The defaults of every typed config node live here and only here: Hydra composes conf/ onto these dataclasses
# (registered below as structured configs, so a wrong type fails at composition, naming its key), and
# `parse_config` fills a plain dict's missing keys from them. The hand checks below are ranges and cross-field
# rules only. conf/optim/paper.yaml and the other presets hold differences from these defaults.


@dataclass
class OptimConfig:
    """IFT's optimiser; the recommended setting (docs/results.md). The paper's: conf/optim/paper.yaml."""

    eta: float = 0.1             # step size η of K̃ₜ = K̃ₜ₋₁ + η·M
    beta: float = 0.9            # momentum β of M = G + β·M (M starts as the first G)
    T: int = 8                   # tuning steps; evaluation after each, step 1 = plain ICL
    position_mode: str = "auto"  # auto: aligned, or continue for ALiBi models; continue: re-read at L..2L-1
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


def config_hash(identity: dict) -> str:
    text = json.dumps(identity, sort_keys=True, default=str, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def to_plain(cfg) -> dict:
    """An OmegaConf node (resolved) or a mapping as plain Python containers."""
    try:
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import MissingMandatoryValue
    except ImportError:  # a notebook without Hydra passes plain dicts
        return dict(cfg)
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            key = getattr(err, "full_key", "") or str(err)
            raise ConfigError(f"{key} is required but not set (it is ??? in the config); "
                              f"e.g. model=hf model.source=/path/to/model_dir") from None
    return dict(cfg)


def _need(node: dict, key: str, where: str):
    if not isinstance(node, dict) or key not in node:
        raise ConfigError(f"{where}.{key} is missing from the config")
    return node[key]


def _int(value, field_name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field_name} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(node: dict, key: str, field_name: str, default: bool) -> bool:
    """A real boolean only: `bool('false')` is True, so strings, numbers and null are refused (YAML and
    command-line true/false arrive as booleans through OmegaConf)."""
    value = node.get(key, default) if isinstance(node, dict) else default
    if not isinstance(value, bool):
        raise ConfigError(f"{field_name} must be true or false, got {value!r}")
    return value


def _reuse_from(value, base: Path) -> tuple[Path, ...]:
    """reuse_from: a list of results-store directories (relative to the launch directory); [] or null: none."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"reuse_from must be a list of results-store directories, e.g. reuse_from=[results/nine], "
                          f"got {value!r}")
    return tuple((base / Path(v).expanduser()).resolve() for v in value)


def _number(value, field_name: str, what: str, ok) -> float:
    """A finite int or float (not a bool) for which ok(value) holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{field_name} must be a finite number {what}, got {value!r}")
    return float(value)


def _choice(value, field_name: str, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{field_name}={value!r} is unknown; choose one of {list(choices)}")
    return value


def _model(node: dict, quant: dict) -> ModelConfig:
    source = node.get("source")
    sizes = node.get("sources")
    if sizes:  # a model family: model.size picks the hub id
        size = node.get("size")
        if size not in sizes:
            raise ConfigError(f"model.size={size!r} is not a size of this model family; choose one of {list(sizes)}")
        source = sizes[size]
    if not source or not isinstance(source, str):
        raise ConfigError("model.source must be 'bundled', a hub id, a local model directory or a .gguf file; "
                          f"got {source!r}")
    name = node.get("name") or Path(source.rstrip("/")).name.removesuffix(".gguf")
    dtype = _choice(quant["dtype"], "quant.dtype", DTYPE_CHOICES)
    method = _choice(quant["method"], "quant.method", QUANTS)
    if method != "none" and is_gguf(source):
        raise ConfigError(f"quant.method={method!r} cannot be used with model.source={source!r}: it is a GGUF file, "
                          f"and GGUF files are dequantised on load (to quant.dtype), so bitsandbytes never sees "
                          f"them; use quant=none, quant=fp16 or quant=bf16")
    trust = _bool(node, "trust_remote_code", "model.trust_remote_code", False)
    return ModelConfig(str(name), source, dtype, method, trust)


def is_gguf(source: str) -> bool:
    """The sources the engine loads as GGUF: "bundled" and the packaged models, a .gguf file, or a directory holding .gguf files but no
    config.json (ift.models._split_gguf)."""
    if source in NAMED_SOURCES or source.lower().endswith(".gguf"):
        return True
    path = Path(source).expanduser()
    try:
        return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf"))
    except OSError:
        return False


def _optim(node) -> OptimConfig:
    node = typed(node, "optim")
    eta = _number(node["eta"], "optim.eta", "> 0", lambda x: x > 0)
    beta = _number(node["beta"], "optim.beta", "in [0, 1)", lambda x: 0 <= x < 1)
    T = _int(node["T"], "optim.T", 1)
    mode = _choice(node["position_mode"], "optim.position_mode", POSITION_MODE_CHOICES)
    patience = node.get("patience")
    if patience is not None:
        patience = _int(patience, "optim.patience (null: no early stopping)", 1)
    return OptimConfig(eta, beta, T, mode, patience)


def _method(node, mode: str) -> Method:
    """The registered method (ift/experiment/methods.py) a config names, by `_target_` (conf/method/*.yaml) or
    `name` (a plain dict); its `_target_` stays out of the store key (the identity is the method's own)."""
    node = {"name": node} if isinstance(node, str) else dict(node or {"name": "ift"})
    target = node.pop("_target_", None)
    if node.get("name") is not None:
        _choice(node["name"], "method.name", METHODS)
    if target is not None:
        module, _, attr = str(target).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"method._target_={target!r} cannot be imported; it must name a Method class, "
                              f"e.g. ift.experiment.methods.Repeat") from None
        if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name):
            raise ConfigError(f"method._target_={target!r} is not a registered Method (ift/experiment/methods.py)")
        if node.get("name", cls.name) != cls.name:
            raise ConfigError(f"method.name={node['name']!r} disagrees with method._target_={target!r} "
                              f"(its name is {cls.name!r})")
    else:
        cls = REGISTRY[_choice(node.get("name", "ift"), "method.name", METHODS)]
    if mode == "efficiency" and cls is not Ift:
        raise ConfigError(f"method={cls.name} cannot run in mode=efficiency (it measures the tuned prefix); "
                          "use method=ift")
    return cls.from_config(node, _setting)


def _setting(value, field_name: str, default):
    """A method setting, checked by the type of its default: an integer >= 1 or a finite number > 0."""
    if isinstance(default, bool):
        return _bool({"v": value}, "v", field_name, default)
    if isinstance(default, int):
        return _int(value, field_name, 1)
    if isinstance(default, float):
        return _number(value, field_name, "> 0", lambda x: x > 0)
    return value


def _logger(node) -> LoggerConfig:
    node = typed(node, "logger")
    _choice(node["mode"], "logger.mode", LOGGER_MODES)
    _number(node["init_timeout"], "logger.init_timeout", "of seconds > 0", lambda x: x > 0)
    return LoggerConfig(**node)


def _task(node, base: Path) -> dict:
    if isinstance(node, str):
        node = {"name": node}
    if not isinstance(node, dict) or not (node.get("name") or node.get("file")):
        raise ConfigError(f"task must be a task config with a `name` (or `file`: a task YAML), got {node!r}; "
                          "e.g. task=sst2 or task=file task.file=my_tasks/animals.yaml")
    node = dict(node)
    for key in ("file", "data_dir"):  # relative paths are relative to where the user launched
        if node.get(key) is not None:
            node[key] = str((base / Path(str(node[key])).expanduser()).resolve())
    return node


def _efficiency(node) -> dict:
    node = typed(node, "efficiency")
    if not node["batch_sizes"]:
        raise ConfigError(f"efficiency.batch_sizes must be a non-empty list of integers, got {node['batch_sizes']!r}")
    for s in node["batch_sizes"]:
        _int(s, "efficiency.batch_sizes[]", 1)
    for key in ("max_batch_limit", "n_examples"):
        _int(node[key], f"efficiency.{key}", 1)
    return node


def parse_config(cfg, base_dir: str | Path | None = None) -> JobConfig:
    """Check every value of a composed config (no model, no data touched) and return a `JobConfig`.

    base_dir anchors relative paths (results_dir, task.file, task.data_dir): the directory the user
    launched from (Hydra may have changed the working directory since).
    """
    c = to_plain(cfg)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    mode = _choice(c.get("mode", "tune"), "mode", MODES)
    seed = _int(c.get("seed", 0), "seed", 0)
    n_shot = _int(c.get("n_shot", 1), "n_shot", 1)
    device = str(c.get("device", "auto"))
    quant = typed(c.get("quant"), "quant")
    if quant["dtype"] == "auto":  # quant=auto: the faster precision on this machine, recorded as resolved
        try:
            quant["dtype"] = fast_dtype(device, quant["method"])
        except ValueError as err:
            raise ConfigError(f"device: {err}") from None
    model = _model(_need(c, "model", "config"), quant)
    try:  # dtype / quantisation / device compatibility, with the engine's own rules
        check_options(model.dtype, model.quant, device)
    except ValueError as err:
        raise ConfigError(f"quant.method / device: {err}") from None
    optim = _optim(c.get("optim"))
    ev = typed(c.get("eval"), "eval")
    results_dir = c.get("results_dir") or os.environ.get("IFT_RESULTS_DIR") or "results"
    job = JobConfig(
        mode=mode, seed=seed, n_shot=n_shot, device=device, model=model,
        task=_task(_need(c, "task", "config"), base), optim=optim, logger=_logger(c.get("logger") or {}),
        results_dir=(base / Path(str(results_dir)).expanduser()).resolve(),
        batch_size=_int(ev["batch_size"], "eval.batch_size", 1),
        save_predictions=ev["save_predictions"], save_prefix=ev["save_prefix"], progress=ev["progress"],
        skip_finished=_bool(c, "skip_finished", "skip_finished", True),
        reuse_from=_reuse_from(c.get("reuse_from"), base),
        dry_run=_bool(c, "dry_run", "dry_run", False),
        efficiency=_efficiency(c.get("efficiency")) if mode == "efficiency" else {},
        method=_method(c.get("method"), mode),
    )
    job.hash = config_hash(job.identity())  # provisional: run_job re-keys it with the task's content (`bind`)
    return job
