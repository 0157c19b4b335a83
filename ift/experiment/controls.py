"""The controls as registered methods, beside IFT on the same rows, demonstrations and dev rows:
where does IFT's gain come from, its update direction or choosing a step on dev among many altered caches?

    random_direction  step t: IFT's per-layer update sizes (‖η·M‖, keys and values apart) in a seeded Gaussian
                      direction, a new one each step (ift.controls.RandomDirectionTuner; settings: optim, like
                      IFT; seed: the job's)
    fixed_direction   step t: IFT's per-layer distance from ICL (‖K̃ₜ − K̃₁‖) along one seeded random line
    dev_demos         step k: ICL with demonstration draw k (k = 1: the job's own), k = 1..draws; the draw is
                      chosen on dev like a step (the classic baseline for a method that selects on dev)
    calibrate         step 1: ICL; step 2: ICL with contextual calibration (Zhao et al. 2021) fitted on the
                      content-free inputs after the same demonstrations (classification tasks only)

Each arm's number of dev candidates is its number of steps (IFT: 2 settings x 15 steps share step 1, 29).
Candidate-matched repetition and gradient grids need no new class: `method.max_repeats=29` (the steps that fit
the model's window run, the cap is recorded in meta.json) and `method=grad optim.T=29`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

from ift.baselines import icl_prefix
from ift.controls import RandomDirectionTuner, calibrate, content_free_examples, demonstration_draws
from ift.experiment.checks import ConfigError
from ift.experiment.methods import Method, MethodInfo, Point
from ift.lengths import fitting_prefixes


@dataclass
class RandomDirection(Method):
    """IFT's step sizes without IFT's direction; keyed by optim like IFT, plus its own name."""

    name: ClassVar[str] = "random_direction"
    about: ClassVar[MethodInfo] = MethodInfo(
        "random direction", "{position_mode} β={beta:g} η={eta:g}", ("position_mode", "beta", "eta"), "T",
        "IFT's update sizes in a seeded random direction, step t", rank=5, tunes=True,
        pools=(("", "mode, η, β, T"),))  # two settings' runs pooled, as IFT's: as many dev candidates
    iterative: ClassVar[bool] = True
    reads_optim: ClassVar[bool] = True
    restarts: ClassVar[bool] = True  # no checkpoint (IFT's trajectory runs alongside): a killed run starts again
    direction: ClassVar[str] = "fresh"  # ift.controls.RandomDirectionTuner: a new direction each step

    def identity(self, optim) -> dict:
        stop = {"patience": optim.patience} if self.patience(optim) is not None else {}
        return {"method": {"name": self.name},
                "optim": {k: v for k, v in asdict(optim).items() if k != "patience"} | stop}

    def checks_length_for_T(self, job) -> int:
        return job.optim.T

    def points(self, job, lm, ready, resumed):
        o = job.optim
        tuner = RandomDirectionTuner(lm, eta=o.eta, beta=o.beta, position_mode=o.position_mode, seed=job.seed,
                                     direction=self.direction)
        return (Point(p.step, p, tune_tokens=p.step * p.length,
                      extra={"update_norm_k": p.grad_norms_k, "update_norm_v": p.grad_norms_v})
                for p in tuner.steps(ready.demos.text, o.T))


@dataclass
class FixedDirection(RandomDirection):
    """IFT's distance from ICL at every step, along one seeded random line per layer: the random direction
    without its random walk, which ends 2-3.5x nearer ICL than IFT's nearly straight path at T = 15
    (bench/bench_displacement.py)."""

    name: ClassVar[str] = "fixed_direction"
    about: ClassVar[MethodInfo] = replace(
        RandomDirection.about, label="fixed random direction",
        step="IFT's distance from ICL along one seeded random line per layer, step t")
    direction: ClassVar[str] = "fixed"


@dataclass
class DevDemos(Method):
    """ICL over `draws` demonstration draws of the job's seed, one per step."""

    name: ClassVar[str] = "dev_demos"
    about: ClassVar[MethodInfo] = MethodInfo("ICL, demonstration draw chosen", chooses="draw",
                                             step="ICL with demonstration draw k", rank=3, plain="demonstration draws",
                                             length="draws")
    draws: int = 29  # dev candidates: as many as IFT's 2 settings x 15 steps (step 1 shared)

    def steps(self, optim) -> int:
        return self.draws

    def longest_demo_text(self, job, task, demos):
        # every draw is made here, before the store: a class too small for a draw fails first
        return max((d.text for d in demonstration_draws(task, job.n_shot, job.seed, self.draws)), key=len)

    def _points(self, job, lm, ready, done):
        draws = demonstration_draws(ready.task, job.n_shot, job.seed, self.draws)
        # the longest draw in characters was checked before the store; every draw, in tokens, before any scoring
        fit, why = fitting_prefixes(lm, [d.text for d in draws], ready.examples + ready.dev)
        if fit < len(draws):
            raise ValueError(f"method=dev_demos: draw {fit + 1} of {self.draws} does not fit this model ({why}); "
                             "lower method.draws or draw shorter demonstrations (+task.demo_max_chars)")
        for k, demos in enumerate(draws, start=1):
            if k in done:
                continue
            prefix = icl_prefix(lm, demos.text)
            yield Point(k, prefix, tune_tokens=prefix.length, extra={"demo_indices": demos.indices})


@dataclass
class Calibrate(Method):
    """ICL (step 1) and ICL with contextual calibration (step 2), the better one chosen on dev."""

    name: ClassVar[str] = "calibrate"
    about: ClassVar[MethodInfo] = MethodInfo("ICL, calibrated or not", chooses="calibration",
                                             step="1: ICL; 2: ICL with contextual calibration", rank=3,
                                             plain="contextual calibration")

    def steps(self, optim) -> int:
        return 2

    def check(self, job, task, demos) -> None:
        try:
            content_free_examples(task)
        except ValueError as err:
            raise ConfigError(f"method=calibrate: {err}") from None

    def _points(self, job, lm, ready, done):
        prefix = icl_prefix(lm, ready.demos.text)
        if 1 not in done:
            yield Point(1, prefix, tune_tokens=prefix.length)
        if 2 not in done:
            fitted = calibrate(lm, ready.task, prefix, batch_size=job.batch_size)
            yield Point(2, prefix, tune_tokens=prefix.length, extra={"p_content_free": fitted.p_cf.tolist()},
                        rescore=fitted)
