"""The machine a job runs on: the versions it records, its peak memory per step, its CPU threads under SLURM."""
from __future__ import annotations

import os
import platform
import resource
import sys

import torch

import ift


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    # the CPU kind too: bf16-mixed products differ in the last bits between CPUs with and without AMX, enough
    # to move an accuracy by a row (docs/results.md, *Precision*), so a rerun elsewhere is recognisable
    cpu = ift.models.cpu_kind()
    out = {"python": platform.python_version(), "cpu": cpu["cpu"] or platform.processor() or None,
           "cpu_amx": cpu["cpu_amx"], "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for package in ("ift", "torch", "transformers", "datasets", "bitsandbytes"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


class PeakMemory:
    """Peak memory of one step: CUDA max allocated on a GPU, else the process's peak RSS (MB)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def fit_threads_to_allocation() -> None:
    """Under SLURM, use the CPUs the job was given: torch's default (every core of the node) makes jobs
    sharing a node fight over cores (measured: a tiny-model step 1.4 s instead of 0.05 s, two jobs on 2 cores)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and int(cpus) < torch.get_num_threads():
        torch.set_num_threads(int(cpus))
