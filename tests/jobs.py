"""Helpers for tests that run whole jobs on a tiny model: a composed config, the step rows a job stored, and a
kill after a given step."""
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def job_cfg(tiny_dir, results, *overrides):
    """The project's config for a tiny HF model on the demo task (12 eval, 6 dev rows), no logger."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["model=hf", f"model.source={tiny_dir}", "task=demo", "task.eval_limit=12",
                                            "task.dev_size=6", "logger=disabled", "eval.progress=false",
                                            f"results_dir={results}", *overrides])


def step_rows(result) -> list[dict]:
    """The rows of a finished job's steps.jsonl, in order."""
    path = Path(result["store"]) / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class Killed(BaseException):
    """Stands for SIGKILL in-process: not an Exception, so the job records nothing on its way out."""


def kill_at(step: int):
    """An on_step hook that kills the job (raises Killed) once step `step` is on disk."""
    def on_step(row):
        if row["step"] == step:
            raise Killed
    return on_step
