"""A composed Hydra config checked and turned into a typed `JobConfig`, before anything heavy happens.

Every check names the config field and its valid values, so `optim.eta=-1` fails in milliseconds
instead of after a model download. `config_hash(job.identity())` keys the results store: two jobs that
would compute the same numbers have the same hash, whatever their logger, batch size or output directory.
The key is final once `JobConfig.bind` has added what the opened task holds (its resolved spec, a
fingerprint of its data files and the demonstration text; ift.experiment.job.prepare does this).

The parts: ift/experiment/schema.py (the typed nodes and their defaults), checks.py (ConfigError and the value
checks), keys.py (the store key); this module parses a whole config with them and re-exports their names.
"""
from __future__ import annotations

import os
from pathlib import Path

from ift.experiment.checks import (
    ConfigError,
    boolean,
    checked,
    choice,
    directories,
    integer,
    need,
    number,
    setting,
)
from ift.experiment.keys import config_hash
from ift.experiment.methods import REGISTRY, Ift, Method
from ift.experiment.schema import (
    SCHEMAS,
    EfficiencyConfig,
    EvalConfig,
    JobConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    QuantConfig,
    method_schema,
    register_configs,
    typed,
)
from ift.models import DTYPE_CHOICES, NAMED_SOURCES, QUANTS, check_options, fast_dtype
from ift.settings import (
    POSITION_MODE_CHOICES,
    check_beta,
    check_eta,
    check_patience,
    check_position_mode,
    check_T,
)

__all__ = ["SCHEMAS", "ConfigError", "EfficiencyConfig", "EvalConfig", "JobConfig", "LoggerConfig", "METHODS",
           "MODES", "ModelConfig", "OptimConfig", "POSITION_MODE_CHOICES", "QuantConfig", "config_hash", "is_gguf",
           "method_schema", "parse_config", "register_configs", "to_plain", "typed"]

MODES = ("tune", "efficiency")
METHODS = tuple(REGISTRY)  # ift/experiment/methods.py: ift, zero_shot, repeat, more_demos, grad; controls.py
LOGGER_MODES = ("offline", "online", "disabled")


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
    dtype = choice(quant["dtype"], "quant.dtype", DTYPE_CHOICES)
    method = choice(quant["method"], "quant.method", QUANTS)
    if method != "none" and is_gguf(source):
        raise ConfigError(f"quant.method={method!r} cannot be used with model.source={source!r}: it is a GGUF file, "
                          f"and GGUF files are dequantised on load (to quant.dtype), so bitsandbytes never sees "
                          f"them; use quant=none, quant=fp16 or quant=bf16")
    trust = boolean(node, "trust_remote_code", "model.trust_remote_code", False)
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
    """IFT's values, by the engine's own checks (ift/settings.py)."""
    node = typed(node, "optim")
    patience = node.get("patience")
    if patience is not None:
        patience = checked(check_patience, patience, "optim.patience (null: no early stopping)")
    return OptimConfig(checked(check_eta, node["eta"], "optim.eta"), checked(check_beta, node["beta"], "optim.beta"),
                       checked(check_T, node["T"], "optim.T"),
                       checked(check_position_mode, node["position_mode"], "optim.position_mode"), patience)


def _method(node, mode: str) -> Method:
    """The registered method (ift/experiment/methods.py) a config names, by `_target_` (conf/method/*.yaml) or
    `name` (a plain dict); its `_target_` stays out of the store key (the identity is the method's own)."""
    node = {"name": node} if isinstance(node, str) else dict(node or {"name": "ift"})
    target = node.pop("_target_", None)
    if node.get("name") is not None:
        choice(node["name"], "method.name", METHODS)
    if target is not None:
        from hydra.utils import get_class

        try:
            cls = get_class(str(target))
        except Exception:  # noqa: BLE001 - Hydra wraps the import error in its own
            raise ConfigError(f"method._target_={target!r} cannot be imported; it must name a Method class, "
                              f"e.g. ift.experiment.methods.Repeat") from None
        if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name):
            raise ConfigError(f"method._target_={target!r} is not a registered Method (ift/experiment/methods.py)")
        if node.get("name", cls.name) != cls.name:
            raise ConfigError(f"method.name={node['name']!r} disagrees with method._target_={target!r} "
                              f"(its name is {cls.name!r})")
    else:
        cls = REGISTRY[choice(node.get("name", "ift"), "method.name", METHODS)]
    if mode == "efficiency" and cls is not Ift:
        raise ConfigError(f"method={cls.name} cannot run in mode=efficiency (it measures the tuned prefix); "
                          "use method=ift")
    return cls.from_config(node, setting)


def _logger(node) -> LoggerConfig:
    node = typed(node, "logger")
    choice(node["mode"], "logger.mode", LOGGER_MODES)
    number(node["init_timeout"], "logger.init_timeout", "of seconds > 0", lambda x: x > 0)
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
        integer(s, "efficiency.batch_sizes[]", 1)
    for key in ("max_batch_limit", "n_examples"):
        integer(node[key], f"efficiency.{key}", 1)
    return node


def results_root(cfg, base: Path) -> Path:
    """The results store: `results_dir`, else $IFT_RESULTS_DIR, else results/, relative to `base` (the launch
    directory)."""
    results_dir = cfg.get("results_dir") or os.environ.get("IFT_RESULTS_DIR") or "results"
    return (base / Path(str(results_dir)).expanduser()).resolve()


def parse_config(cfg, base_dir: str | Path | None = None) -> JobConfig:
    """Check every value of a composed config (no model, no data touched) and return a `JobConfig`.

    base_dir anchors relative paths (results_dir, task.file, task.data_dir): the directory the user
    launched from (Hydra may have changed the working directory since).
    """
    c = to_plain(cfg)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    mode = choice(c.get("mode", "tune"), "mode", MODES)
    seed = integer(c.get("seed", 0), "seed", 0)
    n_shot = integer(c.get("n_shot", 1), "n_shot", 1)
    device = str(c.get("device", "auto"))
    quant = typed(c.get("quant"), "quant")
    if quant["dtype"] == "auto":  # quant=auto: the faster precision on this machine, recorded as resolved
        try:
            quant["dtype"] = fast_dtype(device, quant["method"])
        except ValueError as err:
            raise ConfigError(f"device: {err}") from None
    model = _model(need(c, "model", "config"), quant)
    try:  # dtype / quantisation / device compatibility, with the engine's own rules
        check_options(model.dtype, model.quant, device)
    except ValueError as err:
        raise ConfigError(f"quant.method / device: {err}") from None
    optim = _optim(c.get("optim"))
    ev = typed(c.get("eval"), "eval")
    job = JobConfig(
        mode=mode, seed=seed, n_shot=n_shot, device=device, model=model,
        task=_task(need(c, "task", "config"), base), optim=optim, logger=_logger(c.get("logger") or {}),
        results_dir=results_root(c, base),
        batch_size=integer(ev["batch_size"], "eval.batch_size", 1),
        save_predictions=ev["save_predictions"], save_prefix=ev["save_prefix"], progress=ev["progress"],
        skip_finished=boolean(c, "skip_finished", "skip_finished", True),
        reuse_from=directories(c.get("reuse_from"), "reuse_from", base, "reuse_from=[results/nine]"),
        dry_run=boolean(c, "dry_run", "dry_run", False),
        check_machine_kind=boolean(c, "check_machine_kind", "check_machine_kind", True),
        efficiency=_efficiency(c.get("efficiency")) if mode == "efficiency" else {},
        method=_method(c.get("method"), mode),
    )
    job.hash = config_hash(job.identity())  # provisional: run_job re-keys it with the task's content (`bind`)
    return job
