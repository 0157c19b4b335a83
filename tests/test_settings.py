"""The named settings (ift/settings.py) are the one source of every default and of every check of η, β, T and
the position mode: conf/optim/*.yaml, the config schema, the tuner and the harness model agree with them."""
import inspect
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import ift
from ift import settings
from ift.cache import fit_check
from ift.experiment import ConfigError, parse_config
from ift.experiment.schema import OptimConfig
from ift.gradient import pseudo_gradient_cosine

CONF = Path(__file__).resolve().parents[1] / "conf"
HPARAMS = ("eta", "beta", "position_mode")


def composed_optim(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"optim={name}"])
    return asdict(parse_config(cfg).optim)


@pytest.mark.parametrize("name", sorted(settings.NAMED))
def test_conf_optim_presets_are_the_named_settings(name):
    assert (CONF / "optim" / f"{name}.yaml").exists()
    optim = composed_optim(name)
    assert optim == {**asdict(settings.NAMED[name]), "patience": None}
    assert type(optim["eta"]) is float and type(optim["T"]) is int  # the store key hashes these types


def test_every_conf_optim_preset_is_named():
    assert {p.stem for p in (CONF / "optim").glob("*.yaml")} == set(settings.NAMED)


def defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def is_named(values: dict, keys=HPARAMS) -> list[str]:
    """The names of the settings whose `keys` equal these values."""
    return [n for n, s in settings.NAMED.items() if all(getattr(s, k) == values[k] for k in keys)]


def test_every_entry_points_default_is_a_named_setting():
    schema = {f.name: f.default for f in fields(OptimConfig)}
    assert is_named(schema, (*HPARAMS, "T")) == ["default"]  # the experiment layer: the study default
    assert is_named(defaults(ift.ForwardTuner.__init__)) == ["paper"]  # the library: the paper's
    from ift.controls import RandomDirectionTuner

    assert is_named(defaults(RandomDirectionTuner.__init__)) == ["paper"]  # IFT's step sizes: ForwardTuner's
    lmeval = pytest.importorskip("ift.lmeval")
    harness = defaults(lmeval.IFTLM.__init__)
    assert is_named(harness) == ["paper"]  # reads a fixed step: the paper's (docs/design.md)
    assert harness["T"] == 1  # no fixed T beats ICL on average, so by default the harness model is ICL
    for fn in (fit_check, pseudo_gradient_cosine, ift.check_lengths):
        assert defaults(fn)["position_mode"] == settings.PAPER.position_mode, fn.__name__


def test_settings_refuse_bad_values_on_construction():
    with pytest.raises(ValueError, match=r"beta must be a finite number in \[0, 1\), got 1"):
        settings.Setting(eta=0.1, beta=1, T=8, position_mode="auto")
    with pytest.raises(ValueError, match="T must be an integer >= 1, got True"):
        settings.check_T(True)


BAD = [("eta", -1.0, "eta must be a finite number > 0, got -1.0"),
       ("beta", 1.0, r"beta must be a finite number in \[0, 1\), got 1.0"),
       ("position_mode", "sideways", r"position_mode='sideways' is unknown; choose one of \['auto', 'continue', "
                                     r"'aligned'\]"),
       ("T", 0, "T must be an integer >= 1, got 0")]


@pytest.mark.parametrize("key,value,message", BAD)
def test_one_check_for_config_tuner_and_harness(key, value, message, tiny_lm):
    """The same bad value gets the same message from the config, the tuner and the harness model (each names
    its own field)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"optim.{key}={value}"])
    with pytest.raises(ConfigError, match="optim." + message):
        parse_config(cfg)
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="^" + message):
        if key == "T":
            next(ift.ForwardTuner(lm).steps("a b c\n\n", T=value))
        else:
            ift.ForwardTuner(lm, **{key: value})
    lmeval = pytest.importorskip("ift.lmeval")
    with pytest.raises(ValueError, match="ift model_args: " + message):
        lmeval.IFTLM(pretrained=lm, **{key: value})
