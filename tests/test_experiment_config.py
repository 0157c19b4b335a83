"""Every config group option composes (Hydra compose API), and every invalid value fails early, naming its field."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ift
import ift.experiment.job
from ift.experiment import ConfigError, parse_config, run_job

CONF = Path(__file__).resolve().parents[1] / "conf"
# options that need a value the config cannot know
REQUIRED = {("model", "hf"): ["model.source=/some/dir"], ("model", "gguf"): ["model.source=/some/model.gguf"],
            ("task", "file"): ["task.file=my_tasks/animals.yaml"], ("task", "lmeval"): ["task.name=sst2"],
            # bitsandbytes cannot quantise a GGUF file (the default model is the bundled GGUF)
            ("quant", "int8"): ["model=hf", "model.source=/some/dir"],
            ("quant", "nf4"): ["model=hf", "model.source=/some/dir"]}


def compose_cfg(overrides=(), hydra_node=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_groups_the_docs_promise_exist():
    assert {"bundled", "gpt2", "opt", "gpt_neo", "gptj", "gpt_neox", "bloom", "hf", "gguf"} <= set(options("model"))
    assert set(ift.tasks.list_tasks()) | {"file", "lmeval"} == set(options("task"))
    assert {"default", "no_momentum", "paper"} == set(options("optim"))
    assert {"none", "int8", "nf4", "fp16", "bf16", "bf16_mixed", "auto"} == set(options("quant"))
    assert {"wandb_offline", "wandb_online", "disabled"} == set(options("logger"))
    assert {"rq1_icl_vs_tuned", "rq2_efficiency", "rq3_steps_eta", "rq4_momentum"} <= set(options("experiment"))


@pytest.mark.parametrize("group, option", [(g, o) for g in ("model", "task", "optim", "quant", "logger", "experiment")
                                           for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_cfg([f"{group}={option}"] + REQUIRED.get((group, option), []))
    job = parse_config(cfg)
    assert len(job.hash) == 64
    if group == "quant":
        dtype = ift.models.fast_dtype(cfg.device, cfg.quant.method) if cfg.quant.dtype == "auto" else cfg.quant.dtype
        assert (job.model.dtype, job.model.quant) == (dtype, cfg.quant.method)


def test_defaults_are_the_offline_demo_experiment():
    job = parse_config(compose_cfg())
    assert (job.model.source, job.task_name, job.logger.mode, job.mode) == ("bundled", "demo", "offline", "tune")
    # the recommended setting (docs/results.md), not the paper's
    assert (job.optim.eta, job.optim.beta, job.optim.T, job.optim.position_mode) == (0.1, 0.9, 8, "auto")


@pytest.mark.parametrize("overrides", [["optim=paper"]] + [[f"experiment={e}"] for e in
                                      ("rq1_icl_vs_tuned", "rq2_efficiency", "rq3_steps_eta", "rq4_momentum")])
def test_the_paper_setting_and_the_paper_studies_use_the_papers_optimiser(overrides):
    optim = parse_config(compose_cfg(overrides)).optim
    assert (optim.eta, optim.beta, optim.position_mode) == (0.01, 0.9, "continue")
    assert optim.T == (2 if overrides == ["experiment=rq2_efficiency"] else 15)


@pytest.mark.parametrize("task", ift.tasks.list_tasks())
def test_task_configs_mirror_their_builtin_spec(task):
    """conf/task/<t>.yaml repeats a few spec keys so they can be overridden without `+`; they must agree."""
    from ift.tasks.registry import resolve_spec

    node = compose_cfg([f"task={task}"]).task
    spec = resolve_spec(task)
    for key in ("eval_split", "demo_split", "eval_limit", "dev_size"):
        assert node[key] == getattr(spec, key), key


def test_model_family_size_picks_the_hub_id():
    job = parse_config(compose_cfg(["model=opt", "model.size=1.3b"]))
    assert (job.model.source, job.model.name) == ("facebook/opt-1.3b", "opt-1.3b")
    job = parse_config(compose_cfg(["model=gpt2", "model.size=xl"]))
    assert job.model.source == "openai-community/gpt2-xl"


def test_no_momentum_preset_sets_beta_zero_only():
    base, ablation = (parse_config(compose_cfg([f"optim={o}"])).optim for o in ("default", "no_momentum"))
    assert ablation.beta == 0.0 and (ablation.eta, ablation.T) == (base.eta, base.T)


@pytest.mark.parametrize("launcher, target", [("submitit_slurm", "SlurmLauncher"), ("slurm", "SlurmLauncher"),
                                              ("submitit_local", "LocalLauncher"), ("basic", "BasicLauncher")])
def test_launchers_compose(launcher, target):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], hydra_node=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":  # our documented settings on top of the plugin's schema
        assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.timeout_min == 240


def test_experiment_presets_pin_their_study():
    rq3 = compose_cfg(["experiment=rq3_steps_eta"], hydra_node=True)
    assert rq3.hydra.sweeper.params["optim.eta"] == "0.1,0.01,0.001" and rq3.optim.T == 15
    rq4 = compose_cfg(["experiment=rq4_momentum"], hydra_node=True)
    assert rq4.hydra.sweeper.params["optim.beta"] == "0.9,0.0"
    rq1 = compose_cfg(["experiment=rq1_icl_vs_tuned"], hydra_node=True)
    assert len(rq1.hydra.sweeper.params.task.split(",")) == 10
    assert parse_config(compose_cfg(["experiment=rq2_efficiency"])).mode == "efficiency"


def test_hash_ignores_run_only_keys_and_follows_the_science():
    base = parse_config(compose_cfg()).hash
    same = ["eval.batch_size=4", "logger=disabled", "eval.progress=false", "results_dir=/elsewhere", "device=cpu"]
    for override in same:
        assert parse_config(compose_cfg([override])).hash == base, override
    for override in ["optim.eta=0.05", "optim.T=3", "seed=1", "n_shot=2", "quant=bf16", "task=sst2",
                     "optim.position_mode=aligned", "task.eval_limit=5"]:
        assert parse_config(compose_cfg([override])).hash != base, override


BAD = [
    (["optim.eta=0"], r"optim\.eta must be a finite number > 0, got 0"),
    (["optim.eta=-0.1"], r"optim\.eta must be a finite number > 0"),
    (["optim.beta=1.0"], r"optim\.beta must be a finite number in \[0, 1\), got 1\.0"),
    (["optim.beta=-0.5"], r"optim\.beta must be a finite number in \[0, 1\)"),
    (["optim.eta=inf"], r"optim\.eta must be a finite number > 0, got inf"),
    (["optim.eta=nan"], r"optim\.eta must be a finite number > 0, got nan"),
    (["optim.beta=nan"], r"optim\.beta must be a finite number in \[0, 1\), got nan"),
    (["optim.beta=-inf"], r"optim\.beta must be a finite number in \[0, 1\), got -inf"),
    (["optim.T=0"], r"optim\.T must be an integer >= 1, got 0"),
    (["n_shot=0"], r"n_shot must be an integer >= 1, got 0"),
    (["seed=-1"], r"seed must be an integer >= 0"),
    (["optim.position_mode=sideways"], r"optim\.position_mode='sideways' is unknown; choose one of \['auto', 'continue', 'aligned'\]"),
    (["quant.method=int4"], r"quant\.method='int4' is unknown; choose one of \['none', 'int8', 'nf4'\]"),
    (["quant.dtype=fp8"], r"quant\.dtype='fp8' is unknown; choose one of \['fp32', 'bf16', 'fp16', 'bf16-mixed'\]"),
    (["quant=int8", "device=mps", "model=hf", "model.source=/some/dir"],
     r"quant='int8' is not available on device 'mps'"),
    (["quant=int8"], r"quant\.method='int8' cannot be used with model\.source='bundled': it is a GGUF file, and GGUF "
                     r"files are dequantised on load .* use quant=none, quant=fp16 or quant=bf16"),
    (["quant=nf4", "model=gguf", "model.source=/models/tiny.Q4_K.gguf"],
     r"quant\.method='nf4' cannot be used with model\.source='/models/tiny\.Q4_K\.gguf': it is a GGUF file"),
    # `bool('no')` and `bool('false')` are True: only real booleans are accepted
    (["model.trust_remote_code=no"], r"model\.trust_remote_code must be true or false, got 'no'"),
    (["model.trust_remote_code='false'"], r"model\.trust_remote_code must be true or false, got 'false'"),
    (["skip_finished=0"], r"skip_finished must be true or false, got 0"),
    (["logger.init_timeout=inf"], r"logger\.init_timeout must be a finite number of seconds > 0, got inf"),
    (["model=opt", "model.size=7b"], r"model\.size='7b' is not a size of this model family; choose one of \['125m'"),
    (["model=hf"], r"model\.source is required but not set"),
    (["task=file"], r"task\.file is required but not set"),
    (["mode=train"], r"mode='train' is unknown; choose one of \['tune', 'efficiency'\]"),
    (["logger.mode=sometimes"], r"logger\.mode='sometimes' is unknown; choose one of \['offline', 'online', 'disabled'\]"),
    (["eval.batch_size=0"], r"eval\.batch_size must be an integer >= 1"),
    (["mode=efficiency", "efficiency.batch_sizes=[]"], r"efficiency\.batch_sizes must be a non-empty list"),
]


# the typed nodes (optim, eval, logger, quant, efficiency: dataclasses in ift/experiment/config.py) refuse a
# value of the wrong type while Hydra composes, naming the override
TYPE_ERRORS = [(["optim.T=2.5"], "optim.T"), (["optim.eta=abc"], "optim.eta"), (["eval.progress=null"], "eval.progress"),
               (["mode=efficiency", "efficiency.search=sometimes"], "efficiency.search"),
               (["eval.batch_size=many"], "eval.batch_size"), (["logger.tags=3"], "logger.tags"),
               (["method=repeat", "method.max_repeats=x"], "method.max_repeats"),
               (["method=grad", "method.lr=fast"], "method.lr")]


@pytest.mark.parametrize("overrides, key", TYPE_ERRORS)
def test_wrong_types_fail_while_composing_naming_the_key(overrides, key):
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(overrides)
    assert key in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("name", ["ift", "zero_shot", "repeat", "more_demos", "grad"])
def test_a_method_yaml_composes_its_class_defaults_and_repeats_none(name):
    """conf/method/<name>.yaml only selects the class: the settings and defaults come from its dataclass."""
    from dataclasses import fields

    from ift.experiment.methods import REGISTRY
    cls = REGISTRY[name]
    node = OmegaConf.to_container(compose_cfg([f"method={name}"]).method)
    assert node == {"_target_": f"ift.experiment.methods.{cls.__name__}", "name": name,
                    **{f.name: f.default for f in fields(cls)}}
    yaml_keys = {line.split(":")[0] for line in (CONF / "method" / f"{name}.yaml").read_text().splitlines()
                 if line and not line.startswith((" ", "#"))}
    assert yaml_keys == {"defaults", "_target_", "name"}


def test_a_plain_dict_gets_the_same_types_and_defaults():
    """run_job({...}) without Hydra: missing keys take the dataclass defaults (the ones Hydra composes), and a
    wrong type names its key."""
    job = parse_config({"model": {"source": "bundled"}, "task": "demo"})
    composed = parse_config(compose_cfg())
    assert (job.optim, job.batch_size, job.logger) == (composed.optim, composed.batch_size, composed.logger)
    assert job.optim.position_mode == "auto"  # it was "continue" here, "auto" through Hydra
    with pytest.raises(ConfigError, match=r"optim\.T: Value '2\.5' of type 'float' could not be converted to Integer"):
        parse_config({"model": {"source": "bundled"}, "task": "demo", "optim": {"T": 2.5}})


def test_string_booleans_parse_to_their_meaning():
    """`bool('false')` is True; the typed nodes read 'false' as False."""
    cfg = compose_cfg(["eval.save_prefix='False'", "eval.save_predictions=yes"])
    job = parse_config(cfg)
    assert (job.save_prefix, job.save_predictions) == (False, True)


@pytest.mark.parametrize("overrides, match", BAD)
def test_invalid_values_name_their_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(compose_cfg(overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_quantisation_the_device_cannot_serve():
    with pytest.raises(ConfigError, match=r"device.*no CUDA device is available"):
        parse_config(compose_cfg(["quant=int8", "device=cuda", "model=hf", "model.source=/some/dir"]))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a job gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was noticed")
    monkeypatch.setattr(ift, "load_model", refuse)
    monkeypatch.setattr(ift.experiment.job, "load_model_once", refuse)


@pytest.mark.parametrize("overrides, match", BAD[:4] + [
    (["task=sst2", "task.data_dir=EMPTY"], r"sst2: no folder .*; set task\.data_dir to a directory that has it"),
    (["n_shot=50"], r"demo: 50 demonstrations per class asked, but label 'food' has only"),
    (["+task.template='Sentence: {sentence}'"], r"template placeholder \{sentence\} has no matching field"),
    (["+task.colour=red"], r"unknown key\(s\) \['colour'\]"),
])
def test_bad_input_fails_before_the_model_loads(overrides, match, no_model, tmp_path):
    overrides = [o.replace("EMPTY", str(tmp_path)) for o in overrides] + [f"results_dir={tmp_path / 'res'}",
                                                                          "logger=disabled"]
    with pytest.raises(ValueError, match=match):
        run_job(compose_cfg(overrides))
    assert not (tmp_path / "res").exists(), "a config or data error must not leave a results-store directory"


def test_real_booleans_pass_and_keep_their_value():
    job = parse_config(compose_cfg(["model.trust_remote_code=true", "skip_finished=false", "eval.progress=False",
                                    "eval.save_predictions=TRUE", "eval.save_prefix=false"]))
    assert (job.model.trust_remote_code, job.skip_finished, job.progress, job.save_predictions, job.save_prefix) == \
        (True, False, False, True, False)
    assert parse_config({"model": {"source": "bundled"}, "task": "demo", "optim": {"eta": 0.1, "beta": 0.0, "T": 2},
                         "eval": {"progress": False}}).progress is False


def test_a_directory_holding_only_a_gguf_file_counts_as_gguf(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"quant\.method='int8' cannot be used .* GGUF"):
        parse_config(compose_cfg(["model=hf", f"model.source={tmp_path}", "quant=int8"]))
    (tmp_path / "config.json").write_text("{}")  # an HF directory that also holds a GGUF: loaded as HF
    assert parse_config(compose_cfg(["model=hf", f"model.source={tmp_path}", "quant=int8"])).model.quant == "int8"


def test_plain_dict_config_works_without_hydra():
    cfg = OmegaConf.to_container(compose_cfg(), resolve=True)
    assert parse_config(cfg).hash == parse_config(compose_cfg()).hash
