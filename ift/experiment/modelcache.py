"""The model of a local sweep's jobs, loaded once per process (the model is frozen, so jobs can share it)."""
from __future__ import annotations

import gc
import logging

import torch

import ift

log = logging.getLogger(__name__)


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
            log.error("model %s failed to load earlier in this process; not trying again: %s: %s", source,
                      type(failed).__name__, failed)
            raise failed
        if self.loaded:
            self.loaded.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        try:
            lm = ift.load_model(source, dtype=dtype, device=device, quant=quant, trust_remote_code=trust_remote_code)
        except Exception as err:
            if not isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):  # memory may be free next time
                self.failed[key] = err
            raise
        self.loaded[key] = lm
        return lm

    def cache_clear(self) -> None:
        self.loaded.clear()
        self.failed.clear()


load_model_once = ModelCache()
