"""The methods a study compares, each as a sequence of prefixes along its own knob ("step").

Every method reads the same demonstrations (drawn once per job from the task and seed) and is scored on
the same evaluation and dev rows, so the job layer treats them alike: score the prefix of every step,
let the dev set choose the step. Step 1 is plain ICL for every method but zero-shot.

    ift         step t: after t forward-tuning steps (the paper's method; K̃/Ṽ moved by η·M)
    zero_shot   one step, no demonstrations
    repeat      step r: the demonstrations read r times in a row (does re-reading alone explain IFT?)
    more_demos  step k: k·n_shot demonstrations (per class) instead of n_shot: ICL with a longer prefix
    grad        step s: after s−1 Adam steps on the K/V cache, by backpropagating the demonstrations'
                own leave-one-out answer log-likelihood (a true-gradient counterpart of IFT)

Each method is one registered class (`Method` subclass with a `name`; see its docstring for the interface):
its settings (dataclass fields, checked and typed by `Method.from_config`), the steps it records, its store
identity, the longest prefix it reads, whether early stopping applies, how a killed attempt resumes, and its
step generator (`points`). Methods are pure step generators: the job (ift/experiment/job.py) owns the store,
resuming and tracking, and hands a method what it kept of an earlier attempt (`Resumed`). The config selects
a method by conf/method/<name>.yaml (`_target_`: the class; kept out of the store key). A new method is one
class and one YAML there.
What the analysis pages need of a method (its label, the settings that tell its arms apart, what a step means,
how many dev candidates a run offers) it declares in `about` (`MethodInfo`); the job writes `Method.info(meta)`
to meta.json as `method_info`, and the pages read that, never the method's name.

Compute is counted in forward tokens: `tune_tokens` is what building this step's prefix cost (cumulative
over steps for the iterative methods; backward passes counted apart as `backward_tokens`),
`prefix_tokens` is the cached prefix length every query attends to at inference.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import ift
from ift.baselines import icl_prefix, repeat_demonstrations
from ift.cache import uses_alibi
from ift.experiment.checks import ConfigError
from ift.lengths import fitting_prefixes
from ift.settings import PAPER, STUDY_DEFAULT

log = logging.getLogger(__name__)
REGISTRY: dict[str, type[Method]] = {}  # name -> class, filled by subclassing `Method`


@dataclass
class Point:
    """One step of a method: the prefix to score with (None: zero-shot) and what it cost."""

    step: int
    prefix: ift.TunedPrefix | None
    tune_tokens: int = 0
    backward_tokens: int = 0
    extra: dict = field(default_factory=dict)  # method-specific numbers for the step row (loss, norms ...)
    rescore: Callable[[list], list] | None = None  # scores -> scores before accuracy (contextual calibration)

    @property
    def prefix_tokens(self) -> int:
        return self.prefix.length if self.prefix is not None else 0


def ift_points(lm, demo_text: str, optim, resume_from=None) -> Iterator[Point]:
    tuner = ift.ForwardTuner(lm, eta=optim.eta, beta=optim.beta, position_mode=optim.position_mode)
    for prefix in tuner.steps(demo_text, optim.T, resume_from=resume_from):
        # step 1 reads the L demonstration tokens; every later step re-reads them (attending to 2L)
        yield Point(prefix.step, prefix, tune_tokens=prefix.step * prefix.length,
                    extra={"grad_norm_k": prefix.grad_norms_k, "grad_norm_v": prefix.grad_norms_v})


def window_cap(lm, texts: list[str], examples, setting: str) -> tuple[int, dict]:
    """How many of a method's growing prefixes (one per step) fit the model's positions and window, and what
    meta.json records when not all do (T becomes the steps run, `window_cap` says why): the job runs the steps
    that fit instead of failing as a whole."""
    fit, why = fitting_prefixes(lm, texts, examples)
    if fit == len(texts):
        return fit, {}
    log.warning("only steps 1..%d of %s=%d fit this model; running those (%s)", fit, setting, len(texts), why)
    return fit, {"T": fit, "window_cap": {"setting": setting, "asked": len(texts), "fit": fit, "why": why}}


def zero_shot_points() -> Iterator[Point]:
    yield Point(1, None)


def repeat_points(lm, demo_text: str, max_repeats: int, done: set[int]) -> Iterator[Point]:
    for r in range(1, max_repeats + 1):
        if r in done:
            continue
        prefix = icl_prefix(lm, repeat_demonstrations(demo_text, r))
        yield Point(r, prefix, tune_tokens=prefix.length)


def more_demos_points(lm, task, n_shot: int, seed: int, max_factor: int, done: set[int]) -> Iterator[Point]:
    """k·n_shot demonstrations; the k·n draw of a seed contains the n draw (ift.tasks.sampling)."""
    for k in range(1, max_factor + 1):
        if k in done:
            continue
        demos = task.demonstrations(k * n_shot, seed)
        prefix = icl_prefix(lm, demos.text)
        yield Point(k, prefix, tune_tokens=prefix.length, extra={"n_demonstrations": len(demos.indices)})


def grad_points(lm, demo_examples, T: int, lr: float) -> Iterator[Point]:
    from ift.gradient import GradientTuner

    for prefix in GradientTuner(lm, lr=lr).steps(demo_examples, T):
        m = prefix.meta
        yield Point(prefix.step, prefix, tune_tokens=int(m["tune_tokens"]),
                    backward_tokens=int(m["tune_backward_tokens"]),
                    extra={"loo_loss": m["loss"], "grad_norm_k": prefix.grad_norms_k,
                           "grad_norm_v": prefix.grad_norms_v})


def pseudo_gradient_cosines(lm, demo_examples) -> dict:
    """{position mode: {"k": [cos per layer], "v": [...]}}: IFT's first pseudo-gradient against the true
    descent direction at the ICL cache (ift.gradient.pseudo_gradient_cosine); NaN (a zero vector) is None."""
    from ift.gradient import pseudo_gradient_cosine

    modes = ["continue"] if uses_alibi(lm.model) else ["continue", "aligned"]
    out = {}
    for mode in modes:
        cos = pseudo_gradient_cosine(lm, demo_examples, position_mode=mode)
        out[mode] = {w: [c if math.isfinite(c) else None for c in cos[w]] for w in ("k", "v")}
    return out


@dataclass(frozen=True)
class Resumed:
    """What the job kept of an earlier attempt (ift/experiment/resume.py decides): the steps already recorded,
    and, for a method that checkpoints, the prefix to continue from (None: start at step 1)."""

    done: frozenset[int] = frozenset()
    prefix: ift.TunedPrefix | None = None


@dataclass(frozen=True)
class MethodInfo:
    """What the analysis pages need to know of a method, declared by it (meta.json `method_info`).

    Texts in braces are format strings over the run's meta.json (`"lr={lr:g}"`), filled in by the page from the
    run's own meta, so a setting resolved after the job began (position mode `auto`) reads as run."""

    label: str                   # the method on a page: "gradient tuning"
    setting: str = ""            # one run's settings after the label: "lr={lr:g}" ("": it has none)
    settings: tuple[str, ...] = ()  # the meta.json keys that identify its arm besides the method: ("lr",)
    chooses: str = ""            # what dev picks among a run's steps, as a page names it: "T" ("": one step only)
    step: str = "step"           # what step s of a run is
    rank: int = 6                # its arms' place in a page's tables (zero-shot 0, ICL 1, ...; ties by label)
    step1_is_icl: bool = True    # step 1 is plain ICL on the run's demonstrations (checked equal across methods)
    tunes: bool = False          # its steps tune a prefix (by-task tables list it after the page's subject)
    subject: bool = False        # what the pages study (IFT): its pooled arms head them, the rest are its rivals
    pools: tuple[tuple[str, str], ...] = ()  # arms pooling runs over settings: (the setting kept, what dev picks)
    pooled_rank: int = 5         # the rank of the arm pooling every setting and of the early-stopping arm
    early: str = ""              # what dev picks when simulated early stopping sets the step ("": not simulated)
    plain: str = ""              # its name in prose ("repetition"; default the label)
    named: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()  # settings with a name: (name, ((key, value),))
    length: str = "T"            # the meta.json key that sets how many steps a run records: a run with a
    #                              larger one records the shorter run's steps and more ("max_repeats")


@functools.cache
def _described(cls: type[Method]) -> dict:
    """A method class's `about` as a dict (and its settings' names), made once: the pages ask for every run."""
    about = cls.about or MethodInfo(cls.name, chooses="step")
    return {**asdict(about), "fields": tuple(f.name for f in fields(cls))}


@dataclass
class Method:
    """What a job computes along its steps. Subclasses set `name` (registering them) and their settings.

    The interface a new method implements (everything else has a default):

    - settings: dataclass fields with defaults (`method.<field>=...`; an int must be >= 1, a float > 0);
    - `steps(optim)`: how many steps it records; `longest_demo_text(job, task, demos)`: the longest prefix
      text it reads (checked to fit before any work);
    - `_points(job, lm, ready, done)`: the steps not in `done`, as `Point`s in step order (`ready` is the
      job's prepared inputs: `ready.demos`, `ready.task`, `ready.examples`, `ready.dev`);
    - ClassVars `iterative` (early stopping applies), `reads_optim` (η, β, position mode are its settings),
      and how a killed attempt resumes: by default each recorded step is kept and only missing ones are
      computed; `checkpoints` (it continues from its saved prefix: override `points`) or `restarts` (it keeps
      no state, so recorded steps are redone);
    - optionally `extra_meta(lm, ready)`: numbers measured once before the first step, for meta.json.
    """

    name: ClassVar[str] = ""
    about: ClassVar[MethodInfo | None] = None  # what the analysis pages need; None: its name, steps chosen on dev
    iterative: ClassVar[bool] = False  # step t builds on step t-1, so early stopping (optim.patience) applies
    reads_optim: ClassVar[bool] = False  # η, β and the position mode are its settings (else null in meta.json)
    checkpoints: ClassVar[bool] = False  # saves its prefix each step: resumes from it, continues shorter runs
    restarts: ClassVar[bool] = False  # keeps no state between steps: a killed attempt starts again at step 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls

    @classmethod
    def from_config(cls, node: dict, check) -> Method:
        """The method of a config node, its own settings checked by check(value, "method.<key>", default); settings
        of other methods are ignored (`++method.max_repeats=2` on a sweep over methods)."""
        return cls(**{f.name: check(node.get(f.name, f.default), f"method.{f.name}", f.default) for f in fields(cls)})

    @classmethod
    def info(cls, meta: dict) -> dict:
        """meta.json's `method_info`: `about`, the settings meta.json records for it (its dataclass fields), and how
        many dev candidates the run offers (its steps, meta `T`).
        Also what the analysis derives for a run recorded before `method_info` existed (the same function)."""
        return {**_described(cls), "candidates": int(meta.get("T") or 1)}

    def settings(self) -> dict:
        """The settings this method reads (meta.json records them)."""
        return asdict(self)

    def steps(self, optim) -> int:
        """How many steps (rows) the method records."""
        return optim.T

    def patience(self, optim) -> int | None:
        """The early-stopping patience this method uses: optim.patience for an iterative method, else None."""
        return optim.patience if self.iterative else None

    def identity(self, optim) -> dict:
        """The store key's method part: only the settings this method reads (a baseline's result does not
        depend on η, β or position mode); an unset patience is left out, so keys predating it hold."""
        return {"method": {"name": self.name, **self.settings(), **self._steps_identity(optim)}}

    def _steps_identity(self, optim) -> dict:
        return {}

    def check(self, job, task, demos) -> None:
        """A cross-field check that needs the opened task (raise ConfigError); none by default."""

    def longest_demo_text(self, job, task, demos) -> str | None:
        """The longest prefix text this method reads (the length check before any work)."""
        return demos.text

    def checks_length_for_T(self, job) -> int:
        """The T given to ift.check_lengths (1: the prefix is read once, never re-read)."""
        return 1

    def extra_meta(self, lm, ready) -> dict:
        """Numbers measured once before the first step, for meta.json; none by default."""
        return {}

    def points(self, job, lm, ready, resumed: Resumed) -> Iterator[Point]:
        """The steps still to run, in step order, after what the job kept of an earlier attempt."""
        return self._points(job, lm, ready, set(resumed.done))

    def _points(self, job, lm, ready, done: set[int]) -> Iterator[Point]:
        raise NotImplementedError


@dataclass
class Ift(Method):
    """Iterative forward tuning (its settings are `optim`); resumes from its checkpoint."""

    name: ClassVar[str] = "ift"
    about: ClassVar[MethodInfo] = MethodInfo(
        "IFT", "{position_mode} β={beta:g} η={eta:g}", ("position_mode", "beta", "eta"), "T",
        "tuning step t (step 1: the ICL cache)", rank=6, subject=True,
        pools=(("{position_mode} β={beta:g}", "η, T"), ("", "mode, η, β, T")), early="mode, η, β",
        # the named settings (ift/settings.py) as meta.json records them: "auto" resolved to aligned
        named=(("IFT default", (("position_mode", "aligned"), ("eta", STUDY_DEFAULT.eta), ("beta", STUDY_DEFAULT.beta))),
               ("paper's setting", (("position_mode", PAPER.position_mode), ("eta", PAPER.eta), ("beta", PAPER.beta)))))
    iterative: ClassVar[bool] = True
    reads_optim: ClassVar[bool] = True
    checkpoints: ClassVar[bool] = True

    def identity(self, optim) -> dict:
        stop = {"patience": optim.patience} if self.patience(optim) is not None else {}
        return {"optim": {k: v for k, v in asdict(optim).items() if k != "patience"} | stop}

    def checks_length_for_T(self, job) -> int:
        return job.optim.T

    def points(self, job, lm, ready, resumed):
        return ift_points(lm, ready.demos.text, job.optim, resume_from=resumed.prefix)


@dataclass
class ZeroShot(Method):
    name: ClassVar[str] = "zero_shot"
    about: ClassVar[MethodInfo] = MethodInfo("zero-shot", step="the query alone", rank=0, step1_is_icl=False)

    def steps(self, optim) -> int:
        return 1

    def longest_demo_text(self, job, task, demos):
        return None

    def _points(self, job, lm, ready, done):
        return (p for p in zero_shot_points() if p.step not in done)


@dataclass
class Repeat(Method):
    name: ClassVar[str] = "repeat"
    about: ClassVar[MethodInfo] = MethodInfo("ICL ×r", chooses="r", step="r copies of the demonstrations", rank=2,
                                             plain="repetition", length="max_repeats")
    max_repeats: int = 5  # steps r = 1..max_repeats copies of the demonstrations

    def steps(self, optim) -> int:
        return self.max_repeats

    def longest_demo_text(self, job, task, demos):
        return demos.text  # step 1 must fit; longer steps run while they fit (points: the cap is recorded)

    def extra_meta(self, lm, ready) -> dict:
        """The copies that fit the model's window (the job runs those; meta.json records a cap)."""
        texts = [repeat_demonstrations(ready.demos.text, r) for r in range(1, self.max_repeats + 1)]
        self._fit, capped = window_cap(lm, texts, ready.examples + ready.dev, "method.max_repeats")
        return capped

    def _points(self, job, lm, ready, done):
        if getattr(self, "_fit", None) is None:  # the job calls extra_meta first; a direct caller may not
            self.extra_meta(lm, ready)
        return repeat_points(lm, ready.demos.text, self._fit, done)


@dataclass
class MoreDemos(Method):
    name: ClassVar[str] = "more_demos"
    about: ClassVar[MethodInfo] = MethodInfo("ICL, k×n shots", chooses="k", step="k·n_shot demonstrations",
                                             rank=3, plain="more demonstrations", length="max_factor")
    max_factor: int = 5  # steps k = 1..max_factor times n_shot demonstrations

    def steps(self, optim) -> int:
        return self.max_factor

    def longest_demo_text(self, job, task, demos):
        # drawn before the store so that a class too small for k·n_shot demonstrations fails first
        return task.demonstrations(self.max_factor * job.n_shot, job.seed).text

    def _points(self, job, lm, ready, done):
        return more_demos_points(lm, ready.task, job.n_shot, job.seed, self.max_factor, done)


@dataclass
class Grad(Method):
    name: ClassVar[str] = "grad"
    about: ClassVar[MethodInfo] = MethodInfo("gradient tuning", "lr={lr:g}", ("lr",), "steps",
                                             "after s−1 Adam steps", rank=4, tunes=True)
    iterative: ClassVar[bool] = True
    restarts: ClassVar[bool] = True  # Adam's state is not checkpointed
    lr: float = 0.001  # Adam's learning rate on the K/V cache; larger rates overfit the demonstrations
    #                    within a few steps (docs/results.md)

    def _steps_identity(self, optim) -> dict:
        stop = {"patience": optim.patience} if self.patience(optim) is not None else {}
        return {"T": optim.T, **stop}

    def check(self, job, task, demos) -> None:
        if len(demos.indices) < 2:
            raise ConfigError(f"method=grad needs at least 2 demonstrations (each one's answer is predicted from "
                              f"the others: leave-one-out), but n_shot={job.n_shot} gives {len(demos.indices)} on "
                              f"{task.name}; raise n_shot (multiple-choice tasks count demonstrations in all)")

    def extra_meta(self, lm, ready) -> dict:
        return {"pseudo_grad_cosine": pseudo_gradient_cosines(lm, _demo_examples(ready))}

    def points(self, job, lm, ready, resumed):
        return grad_points(lm, _demo_examples(ready), job.optim.T, self.lr)


def _demo_examples(ready) -> list:
    return [ready.task.example("demo_split", i) for i in ready.demos.indices]
