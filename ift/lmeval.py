"""ift inside lm-evaluation-harness: IFT as a harness model, and the harness's HF model on ift's weights.

- `IFTLM` (registered as `ift`): the harness's `LM` contract (`loglikelihood(requests)`). Per task, the text
  every request's context starts with (cut after its last "\\n\\n": the few-shot block) is tuned with IFT for
  T steps, and every request is scored after that tuned prefix cache. The harness draws few-shot examples
  per document; `python -m ift.lmeval --data_dir DIR ...` fixes them per task (ift's seeded sampler, the same
  set `launch.py task=lmeval` uses) so that the block is shared. See docs/lmeval.md.
- `hflm(lm)`: the harness's own `HFLM` on an ift `LoadedModel` (same weights, e.g. the bundled GGUF model),
  for the parity test and bench/bench_lmeval.py.

Needs the optional `lmeval` extra. Engine-side: no hydra, wandb or submitit.

    python -m ift.lmeval --data_dir ../shared/data --model ift --model_args pretrained=bundled,T=4,eta=0.1 \\
        --tasks sst2 --ift_shots 1 --limit 20
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from ift.settings import PAPER, check_beta, check_eta, check_position_mode, check_T
from ift.tasks.harness import harness_config, harness_yaml, load_harness_task, require_lm_eval

require_lm_eval()

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

log = logging.getLogger(__name__)


def hflm(lm, batch_size: int = 32):
    """lm-eval's `HFLM` wrapping an ift `LoadedModel` (the very weights ift scores with)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, device=str(lm.device))


def requests(examples, demonstrations: str = "") -> list[Instance]:
    """One harness loglikelihood request per candidate: (demonstrations + context, continuation)."""
    return [Instance("loglikelihood", {}, (demonstrations + c, k), j, ("ift", e, 1))
            for e, ex in enumerate(examples) for j, (c, k) in enumerate(zip(ex.contexts, ex.continuations))]


def shared_block(contexts: list[str], delimiter: str = "\n\n") -> str:
    """The longest common start of all contexts, cut after its last delimiter: the few-shot block a task's
    requests share ("" if none)."""
    first = min(contexts, default="")
    last = max(contexts, default="")
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1  # the common prefix of the min and max strings is common to all
    cut = first.rfind(delimiter, 0, n)
    return first[: cut + len(delimiter)] if cut >= 0 else ""


class ModelArgsError(ValueError):
    """A bad `ift` model_args value: main() prints it as one line (exit 2) instead of the harness's traceback."""


def _number(value, kind, name):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelArgsError(f"ift model_args: {name} must be {kind.__name__}, got {value!r}") from None


@register_model("ift")
class IFTLM(LM):
    """IFT as an lm-eval model: tune each task's shared few-shot block T steps, score after the tuned cache.

    model_args: pretrained (ift.load_model source: bundled, hub id, HF dir or GGUF; or a LoadedModel), T
    (1 = plain ICL), eta, beta, position_mode (auto|aligned|continue), dtype, quant, device, batch_size.

    It reads the last of a fixed T steps, so η, β and the position mode default to the paper's setting
    (ift.settings.PAPER), whose fixed-T curve stays near ICL for small T; T defaults to 1 (ICL), since no
    fixed T beats ICL on average (docs/design.md, *Defaults*).
    """

    def __init__(self, pretrained="bundled", T=1, eta=PAPER.eta, beta=PAPER.beta, position_mode=PAPER.position_mode,
                 dtype="fp32", quant="none", device="auto", batch_size=32, max_batch_size=None, **ignored):
        super().__init__()
        import ift

        if ignored:
            log.warning("ift model: ignoring model_args %s", sorted(ignored))
        try:
            self.T = check_T(_number(T, int, "T"), "ift model_args: T")
            self.eta = check_eta(_number(eta, float, "eta"), "ift model_args: eta")
            self.beta = check_beta(_number(beta, float, "beta"), "ift model_args: beta")
            self.position_mode = check_position_mode(position_mode, "ift model_args: position_mode")
        except ValueError as err:  # the engine's checks (ift/settings.py) name the field and its range
            raise ModelArgsError(str(err)) from None
        self.batch_size = batch_size if isinstance(batch_size, int) and batch_size > 0 else 32
        import torch

        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "auto"  # the harness passes --device (default cuda:0) even on a CPU-only machine
        self.lm = pretrained if hasattr(pretrained, "tokenizer") else ift.load_model(
            str(pretrained), dtype=dtype, device=device, quant=quant)
        self.blocks: dict[str, str] = {}  # task -> the few-shot block tuned for it (for tests and logs)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        import ift
        from ift.example import Example

        by_task = defaultdict(list)
        for i, req in enumerate(requests):
            by_task[getattr(req, "task_name", None)].append(i)
        out = [None] * len(requests)
        for task, idx in by_task.items():
            contexts = [requests[i].args[0] for i in idx]
            block = shared_block(contexts)
            self.blocks[str(task)] = block
            examples = [Example((requests[i].args[0][len(block):],), (requests[i].args[1],), -1, i) for i in idx]
            if not block:
                log.warning("ift model, task %s: the requests share no few-shot block, so IFT has nothing to tune "
                            "(zero-shot, or demonstrations drawn per document: run through `python -m ift.lmeval` "
                            "to fix them per task); scoring each context as given", task)
                scores = ift.score_examples(self.lm, examples, batch_size=self.batch_size)
            else:
                prefix = None
                tuner = ift.ForwardTuner(self.lm, eta=self.eta, beta=self.beta, position_mode=self.position_mode)
                for prefix in tuner.steps(block, self.T):
                    pass
                if prefix.diverged:
                    log.warning("ift model, task %s: tuning diverged at step %d; scoring with that step's cache",
                                task, prefix.step)
                scores = ift.score_examples(self.lm, examples, prefix=prefix, batch_size=self.batch_size)
            for i, s in zip(idx, scores):
                out[i] = (s.sum_logprobs[0], False)  # greedy-ness is not computed (exact_match unsupported)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the ift model scores multiple-choice requests only (loglikelihood)")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the ift model scores multiple-choice requests only (loglikelihood)")


# --- python -m ift.lmeval: the harness's own CLI with `ift` registered and local data -------------------

def local_task_yaml(name: str, data_dir, out_dir, shots: int | None = None, seed: int = 0,
                    folder: str | None = None) -> Path:
    """Write `<out_dir>/<name>.yaml`: the harness task `name` (included from its own YAML) reading its rows
    from `<data_dir>/<folder or name>/`, and, with `shots`, a few-shot set fixed for every document: ift's
    seeded demonstrations (`load_harness_task(...).demonstrations(shots, seed)`: per class when the choices
    are fixed), the same set `launch.py task=lmeval n_shot=shots seed=seed` tunes."""
    from ift.tasks.harness import local_dataset_overrides

    cfg, source = harness_config(name), str(harness_yaml(name))
    data_dir = Path(data_dir).expanduser().resolve()
    over = {"include": source, "task": name, **local_dataset_overrides(cfg, data_dir / (folder or name))}
    if shots:
        task = load_harness_task(name, data_dir, dir=folder)
        demos = task.demonstrations(shots, seed)
        docs = task.split("demo_split")
        over.update(fewshot_split=None, num_fewshot=len(demos.indices),
                    fewshot_config={"sampler": "first_n", "samples": [dict(docs[i]) for i in demos.indices]})
    path = Path(out_dir) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(over, sort_keys=False, allow_unicode=True))
    return path


def _pop_option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i: i + 2]
            return value
        if arg.startswith(flag + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> None:
    """`lm_eval`'s CLI with the `ift` model registered, plus ift's options (removed before the harness sees
    them): --data_dir DIR (rows from DIR/<task>/<split>.jsonl; default $IFT_DATA_DIR; without either the
    harness downloads as usual), --ift_shots N and --ift_seed S (the fixed few-shot set; N per class for
    fixed-choice tasks), --ift_dirs task=folder,... (a data folder not named like the task). A bad `ift`
    model_args value is one line on stderr and exit status 2."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    data_dir = _pop_option(argv, "--data_dir") or os.environ.get("IFT_DATA_DIR")
    shots = _pop_option(argv, "--ift_shots")
    seed = int(_pop_option(argv, "--ift_seed") or 0)
    dirs = dict(pair.split("=", 1) for pair in (_pop_option(argv, "--ift_dirs") or "").split(",") if pair)
    if shots is not None and not data_dir:
        raise SystemExit("--ift_shots needs --data_dir (or $IFT_DATA_DIR): the fixed set is drawn from local rows")
    if data_dir and argv and argv[0] not in ("ls", "validate"):
        tasks = _pop_option(argv, "--tasks")
        if tasks is None:
            raise SystemExit("--data_dir needs --tasks")
        out = Path(tempfile.mkdtemp(prefix="ift-lmeval-tasks-"))
        for name in tasks.split(","):
            local_task_yaml(name, data_dir, out, int(shots) if shots else None, seed, dirs.get(name))
        argv += ["--tasks", tasks, "--include_path", str(out)]
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except ModelArgsError as err:  # a bad T, eta, beta or position_mode: one line naming it and its range
        print(f"ift.lmeval: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
