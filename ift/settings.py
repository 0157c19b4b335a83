"""The IFT settings the project names, defined once, and the one check of each hyperparameter.

A setting is (η, β, T, position mode) of K̃ₜ = K̃ₜ₋₁ + η·M, M = G + β·M (ift/tuner.py):

    STUDY_DEFAULT  aligned re-reads (auto), η = 0.1, β = 0.9, T = 8: the experiment layer's default
                   (conf/optim/default.yaml), where the dev rows choose the step
    PAPER          the paper's: continue re-reads, η = 0.01, β = 0.9, T = 15 (conf/optim/paper.yaml); the
                   library's and the harness model's default, since a caller that reads a fixed step gets
                   about ICL with it for small T, where the study default falls below ICL (docs/design.md)
    NO_MOMENTUM    the study default with β = 0 (conf/optim/no_momentum.yaml)

The engine (ForwardTuner, the cache and gradient helpers), the config schema (OptimConfig), the harness model
(IFTLM) and conf/optim/*.yaml take their defaults from here, and the config, the tuner and the harness
model check values with the functions below (a test holds them to it).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

POSITION_MODES = ("continue", "aligned")
# "auto": aligned where the model has absolute positions to align, else (ALiBi: BLOOM) continue
POSITION_MODE_CHOICES = ("auto", *POSITION_MODES)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_eta(eta, name: str = "eta") -> float:
    """η as a float; a finite number > 0 (inf would "finish" as garbage)."""
    if not (_real(eta) and math.isfinite(eta) and eta > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {eta!r}")
    return float(eta)


def check_beta(beta, name: str = "beta") -> float:
    """β as a float; in [0, 1) (β = 1 never forgets a pseudo-gradient)."""
    if not (_real(beta) and 0 <= beta < 1):  # NaN fails both comparisons
        raise ValueError(f"{name} must be a finite number in [0, 1), got {beta!r}")
    return float(beta)


def check_T(T, name: str = "T") -> int:
    """The number of steps: an integer >= 1 (step 1 is plain ICL)."""
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {T!r}")
    return int(T)


def check_patience(patience, name: str = "patience") -> int:
    """Early stopping's patience: an integer >= 1 (steps without a better dev score before stopping)."""
    if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {patience!r}")
    return int(patience)


def check_position_mode(position_mode, name: str = "position_mode") -> str:
    if position_mode not in POSITION_MODE_CHOICES:
        raise ValueError(f"{name}={position_mode!r} is unknown; choose one of {list(POSITION_MODE_CHOICES)}")
    return position_mode


@dataclass(frozen=True)
class Setting:
    """One named IFT setting; checked on construction."""

    eta: float
    beta: float
    T: int
    position_mode: str

    def __post_init__(self):
        check_eta(self.eta)
        check_beta(self.beta)
        check_T(self.T)
        check_position_mode(self.position_mode)


STUDY_DEFAULT = Setting(eta=0.1, beta=0.9, T=8, position_mode="auto")
PAPER = Setting(eta=0.01, beta=0.9, T=15, position_mode="continue")
NO_MOMENTUM = Setting(eta=STUDY_DEFAULT.eta, beta=0.0, T=STUDY_DEFAULT.T, position_mode=STUDY_DEFAULT.position_mode)

# name -> setting; the names are conf/optim/<name>.yaml's
NAMED = {"default": STUDY_DEFAULT, "paper": PAPER, "no_momentum": NO_MOMENTUM}
