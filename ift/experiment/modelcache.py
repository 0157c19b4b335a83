"""The model of a local sweep's jobs, loaded once per process (the model is frozen, so jobs can share it).

A job loads its model before it creates its store directory or its wandb run (ift/experiment/job.py), so a
load error leaves nothing behind; the error is one line (ModelLoadError). A hub id with the Hugging Face Hub
out of reach is looked up in the local cache only, at once, instead of after a minute of retries.
"""
from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import torch

import ift
from ift.models import HUB_ID, PACKAGED_GGUF
from ift.reach import unreachable

log = logging.getLogger(__name__)
HUB_CHECK_TIMEOUT_S = 3.0


class ModelLoadError(RuntimeError):
    """The model could not be loaded: one line naming the source and why."""


def is_hub_id(source: str) -> bool:
    return source != "bundled" and source not in PACKAGED_GGUF and not Path(source).expanduser().exists() \
        and HUB_ID.fullmatch(source.split("::")[0]) is not None


def hub_unreachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub (HF_ENDPOINT) cannot be reached, or None when a connection opens in `timeout`."""
    from huggingface_hub import constants

    why = unreachable(constants.ENDPOINT, timeout)
    return None if why is None else f"{constants.ENDPOINT} cannot be reached ({why})"


def go_offline_if_unreachable(source: str) -> None:
    """For a hub id, when HF_HUB_OFFLINE is not set and the hub does not answer in a few seconds: set it (this
    process), so the model comes from the local cache at once or the load fails at once saying so."""
    from huggingface_hub import constants

    if not is_hub_id(source) or constants.HF_HUB_OFFLINE:
        return
    why = hub_unreachable()
    if why is None:
        return
    log.warning("the Hugging Face Hub %s: loading %s from the local cache only (HF_HUB_OFFLINE=1)", why, source)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def one_line(err: BaseException, source: str) -> str:
    text = " ".join(str(err).split())
    return text if source in text else f"model {source!r}: {text}"


class ModelCache:
    """The jobs of a local sweep run in one process: the next job with the same model reuses it instead of
    loading it again (the bundled GGUF takes ~20 s). One model is kept, and the previous one is dropped before
    another loads.

    A load that failed is not tried again with the same arguments in this process: the next jobs of the sweep
    fail at once with the same error instead of each waiting for the same hub timeout (out-of-memory errors
    excepted; `cache_clear()` forgets both the model and the failures).
    """

    def __init__(self):
        self.loaded: dict[tuple, object] = {}          # the last model loaded (one kept)
        self.failed: dict[tuple, Exception] = {}       # loads that failed, by their exact arguments

    def __call__(self, source: str, dtype: str, device: str, quant: str, trust_remote_code: bool):
        key = (source, dtype, device, quant, trust_remote_code)
        if key in self.loaded:
            return self.loaded[key]
        failed = self.failed.get(key)
        if failed is not None:
            log.error("model %s failed to load earlier in this process; not trying again", source)
            raise failed
        if self.loaded:
            self.loaded.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        try:
            go_offline_if_unreachable(source)
            lm = ift.load_model(source, dtype=dtype, device=device, quant=quant, trust_remote_code=trust_remote_code)
        except Exception as err:
            if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):  # memory may be free next time
                raise
            failed = ModelLoadError(one_line(err, source))
            self.failed[key] = failed
            raise failed from err
        self.loaded[key] = lm
        return lm

    def cache_clear(self) -> None:
        self.loaded.clear()
        self.failed.clear()


load_model_once = ModelCache()
