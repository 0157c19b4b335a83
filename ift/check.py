"""A self-check to run on a node before a sweep: `python -m ift.check [--device cuda]` (or `ift-check`).

Why: the GPU paths (device maps, autocast, fp16, bitsandbytes kernels, the true-gradient baseline, prefixes on
a device) never run on a CPU-only development machine. This check runs them all in a minute, on a tiny random
model built here (no download, no network): the environment; IFT tuning, ICL scoring, tuned-prefix scoring and
the gradient baseline on the CPU and on the device, compared; each precision the device really supports
(fp32, bf16-mixed where bf16 is native, fp16 on CUDA, int8/nf4 when bitsandbytes works) against fp32 on the
CPU; and a tuned prefix saved and reloaded. It prints one screen with a verdict and exits non-zero on any
failure. A precision the device does not support is skipped, with the reason.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

import ift
from ift.example import Example
from ift.models import cpu_kind, cuda_bf16_native, gpus_allocated, load_model

# two demonstrations and four queries in the shape of the built-in tasks (one-token and multi-token answers)
DEMO_EXAMPLES = [
    Example.shared("Review: a gripping, funny and warm film\nSentiment:", [" negative", " positive"], 1, 0),
    Example.shared("Review: dull, slow and far too long\nSentiment:", [" negative", " positive"], 0, 1),
]
DEMOS = "".join(ex.demonstration + "\n\n" for ex in DEMO_EXAMPLES)
EXAMPLES = [
    Example.shared("Review: warm and funny\nSentiment:", [" negative", " positive"], 1, 0),
    Example.shared("Review: far too long\nSentiment:", [" negative", " positive"], 0, 1),
    Example.shared("Question: Who wrote the novel?\nType:", [" Person", " Number", " Location"], 0, 2),
    Example(("The man broke his toe because he", "The man broke his toe therefore he"), (" fell.", " fell."), 0, 3),
]
CORPUS = [ex.demonstration for ex in DEMO_EXAMPLES + EXAMPLES] * 4
# largest |score difference| from fp32 on the CPU (sum of log-probabilities, tiny random model: scores ~ -6 per
# token): fp32 on a device differs in the last bits only; the low precisions by their rounding
TOLERANCE = {"fp32": 1e-3, "bf16-mixed": 0.25, "fp16": 0.1, "int8": 0.5, "nf4": 2.0}
STEPS = 3  # IFT and gradient steps: enough for the updates to matter
# the gradient baseline's floor: Adam's first steps move each K/V entry by about ±lr whatever the gradient's size,
# so rounding that flips the sign of a near-zero gradient moves an entry by 2·lr (lr = 1e-2 here)
GRADIENT_TOLERANCE = 0.05


@dataclass
class Result:
    check: str
    device: str
    status: str  # PASS | FAIL | SKIP
    detail: str


def build_tiny_model(directory: Path) -> Path:
    """A 2-layer Llama with a 400-token byte-level BPE tokenizer trained on CORPUS, saved as an HF directory (so
    that every precision is loaded by `load_model`, the path jobs take)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|bos|>", "<|eos|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    config = LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>").save_pretrained(directory)
    return directory


def pipeline(lm, gradient: bool = True) -> dict[str, list[float]]:
    """Every candidate's score after: ICL, IFT (STEPS steps), and the gradient baseline (STEPS steps)."""
    out = {"icl": ift.score_examples(lm, EXAMPLES, demonstrations=DEMOS)}
    prefixes = list(ift.ForwardTuner(lm, eta=0.1, beta=0.9, position_mode="aligned").steps(DEMOS, STEPS))
    out["step 1"] = ift.score_examples(lm, EXAMPLES, prefix=prefixes[0])
    out["ift"] = ift.score_examples(lm, EXAMPLES, prefix=prefixes[-1])
    if gradient:
        out["grad"] = ift.score_examples(lm, EXAMPLES, prefix=list(ift.GradientTuner(lm, lr=1e-2).steps(
            DEMO_EXAMPLES, STEPS))[-1])
    return {k: [x for s in v for x in s.sum_logprobs] for k, v in out.items()}


def within(reference: dict, got: dict, tol: float) -> tuple[bool, str]:
    """Whether every score in `got` is within tol of `reference` (the gradient's within GRADIENT_TOLERANCE at
    least), and the largest difference, per method."""
    diffs = {key: max(abs(x - y) for x, y in zip(reference[key], got[key])) for key in got}
    ok = all(d <= (max(tol, GRADIENT_TOLERANCE) if key == "grad" else tol) for key, d in diffs.items())
    worst = max((d for key, d in diffs.items() if key != "grad"), default=0.0)
    grad = f", gradient {diffs['grad']:.1e} ({max(tol, GRADIENT_TOLERANCE):g})" if "grad" in diffs else ""
    return ok, f"max |score - cpu fp32| {worst:.1e} (allowed {tol:g}){grad}"


def environment(device: torch.device) -> list[str]:
    def ver(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    lines = [f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), transformers "
             f"{ver('transformers')}, datasets {ver('datasets')}, bitsandbytes {ver('bitsandbytes')}, "
             f"python {sys.version.split()[0]}"]
    cpu = cpu_kind()
    lines.append(f"CPU: {cpu['cpu'] or 'unknown'}; AMX bf16: {'yes' if cpu['cpu_amx'] else 'no'}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, "
                         f"bf16 {'native' if (p.major, p.minor) >= (8, 0) else 'emulated (slower than fp32)'}")
    else:
        lines.append("GPU: none visible to torch" + (f" (but {gpus_allocated()} is set)" if gpus_allocated() else ""))
    lines.append(f"checked device: {device}")
    return lines


def precisions(device: torch.device) -> list[tuple[str, str, str | None]]:
    """(label, dtype, quant) of every precision to check on `device`, or the reason it is skipped (in dtype)."""
    kind = device.type
    out: list[tuple[str, str, str | None]] = []
    native = cuda_bf16_native(device) if kind == "cuda" else cpu_kind()["cpu_amx"]
    out.append(("bf16-mixed", "bf16-mixed", "none") if native else
               ("bf16-mixed", "SKIP: bf16 is emulated here (slower than fp32; quant=auto picks fp32)", None))
    out.append(("fp16", "fp16", "none") if kind == "cuda" else ("fp16", "SKIP: CUDA only", None))
    try:
        import bitsandbytes  # noqa: F401
        have_bnb = True
    except Exception as err:  # noqa: BLE001 - an import that fails for any reason means no quantisation here
        have_bnb, why = False, f"SKIP: bitsandbytes does not import ({type(err).__name__}: {err})"[:110]
    for quant in ("int8", "nf4"):
        out.append((quant, ift.models.fast_dtype(str(device), quant), quant) if have_bnb else (quant, why, None))
    return out


def _try(results: list[Result], check: str, device: str, fn) -> object:
    """Run one check; record PASS with fn's detail, or FAIL with the error; return fn's value (None on failure)."""
    try:
        ok, detail, value = fn()
    except Exception as err:  # noqa: BLE001 - every failure is a verdict line, the traceback goes to stderr
        traceback.print_exc(file=sys.stderr)
        results.append(Result(check, device, "FAIL", f"{type(err).__name__}: {err}".splitlines()[0][:110]))
        return None
    results.append(Result(check, device, "PASS" if ok else "FAIL", detail))
    return value


def run_checks(device: str = "auto") -> tuple[list[str], list[Result]]:
    """The environment lines and one Result per check."""
    results: list[Result] = []
    try:
        dev = ift.models.check_options(device=device)
    except ValueError as err:
        return [str(err)], [Result("device", device, "FAIL", str(err)[:110])]
    env = environment(dev)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(build_tiny_model(Path(tmp) / "tiny"))

        def reference():
            lm = load_model(path, device="cpu")
            scores = pipeline(lm)
            finite = all(math.isfinite(x) for v in scores.values() for x in v)
            same = max(abs(x - y) for x, y in zip(scores["icl"], scores["step 1"]))
            return finite and same < 1e-4, f"finite; IFT step 1 = ICL within {same:.1e}", scores

        start = time.perf_counter()
        cpu = _try(results, "fp32: tune, score, gradient", "cpu", reference)
        if cpu is None:
            return env, results

        def against_cpu(dtype, quant, tol):
            def check():
                lm = load_model(path, dtype=dtype, device=str(dev), quant=quant)
                if lm.device.type != dev.type or next(lm.model.parameters()).device.type != dev.type:
                    return False, f"the model is on {next(lm.model.parameters()).device}, not {dev}", None
                got = pipeline(lm, gradient=quant == "none")
                ok, detail = within(cpu, got, tol)
                return ok, detail, lm
            return check

        if dev.type != "cpu":
            lm = _try(results, "fp32: tune, score, gradient", str(dev), against_cpu("fp32", "none", TOLERANCE["fp32"]))
        else:
            lm = load_model(path, device="cpu")
        for label, dtype, quant in precisions(dev):
            if quant is None:
                results.append(Result(label, str(dev), "SKIP", dtype.removeprefix("SKIP: ")))
                continue
            what = f"{label}: tune, score" + (", gradient" if quant == "none" else f" (compute {dtype})")
            _try(results, what, str(dev), against_cpu(dtype, quant, TOLERANCE[label]))
        if lm is not None:
            def saved_prefix():
                prefix = list(ift.ForwardTuner(lm, eta=0.1, beta=0.9).steps(DEMOS, STEPS))[-1]
                before = ift.score_examples(lm, EXAMPLES, prefix=prefix)
                prefix.save(Path(tmp) / "prefix.safetensors")
                again = ift.TunedPrefix.load(Path(tmp) / "prefix.safetensors", lm)
                after = ift.score_examples(lm, EXAMPLES, prefix=again)
                same = [s.sum_logprobs for s in before] == [s.sum_logprobs for s in after]
                return same, "reloaded prefix scores identically" if same else "scores changed after reload", None
            _try(results, "prefix saved and reloaded", str(dev), saved_prefix)
        if dev.type != "cpu":
            _try(results, "bundled GGUF model: load, score", str(dev), lambda: gguf_on_device(dev))
        env.append(f"checks took {time.perf_counter() - start:.1f} s")
    return env, results


def gguf_on_device(device: torch.device):
    """The bundled SmolLM2 (a GGUF file, dequantised on load) scored on the device against the CPU: the GGUF
    path through a device map. (ok, detail, None); not installed counts as a pass that says so."""
    try:
        ift.models.bundled_model_path()
    except FileNotFoundError as err:
        return True, f"not installed, not checked ({err})"[:110], None
    scores = []
    for where in ("cpu", str(device)):
        lm = load_model("bundled", device=where)
        scores.append([x for s in ift.score_examples(lm, EXAMPLES, demonstrations=DEMOS) for x in s.sum_logprobs])
        del lm
    diff = max(abs(a - b) for a, b in zip(*scores))
    return diff <= 1e-2, f"max |score - cpu| {diff:.1e} (allowed 0.01)", None


def verdict_table(env: list[str], results: list[Result]) -> str:
    width = max(len(r.check) for r in results)
    lines = ["ift self-check", *(f"  {line}" for line in env), "",
             f"{'check':<{width}}  {'device':<7} result  detail"]
    lines += [f"{r.check:<{width}}  {r.device:<7} {r.status:<6}  {r.detail}" for r in results]
    failed = [r for r in results if r.status == "FAIL"]
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    summary = f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
    lines += ["", f"verdict: {'FAIL' if failed else 'PASS'} ({summary})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ift.check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if visible), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    env, results = run_checks(args.device)
    print(verdict_table(env, results))
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
