"""SIGTERM and Ctrl-C during a job: the store says `interrupted`, the user reads one line saying how to resume.

SIGTERM is what `kill`, a shutdown and SLURM's scancel send. Inside a job it is raised as a KeyboardInterrupt
(`Interrupted`), like Ctrl-C, so the job stops between two writes of the store, marks itself interrupted and
ends with `JobInterrupted`; the launcher prints its message and exits 128 + the signal number. A handler that
someone else installed (submitit's, for its own requeueing) is left in place.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """A signal that ends the job (SIGTERM), raised where the job is."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


class JobInterrupted(KeyboardInterrupt):
    """The job stopped on a signal after recording its finished steps; the message is the one line to print."""

    def __init__(self, step: int, store: Path, signum: int = signal.SIGINT):
        self.step, self.store, self.signum = step, store, signum
        super().__init__(f"interrupted at step {step}; re-run the same command to resume ({store})")

    def __str__(self) -> str:
        return self.args[0]


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raised():
    """SIGTERM raises `Interrupted` inside the block (main thread, default handler only); restored after."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
