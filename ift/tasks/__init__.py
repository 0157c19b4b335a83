"""Benchmark tasks and user-defined tasks: data, templates, seeded demonstrations.

    task = load_task("sst2", data_dir="../shared/data")
    demos = task.demonstrations(4, seed=0)        # 4 per class, shuffled; demos.text ends with "\\n\\n"
    examples = task.eval_examples(seed=0)
"""
from ift.tasks.registry import list_tasks, load_task
from ift.tasks.spec import TaskError, TaskSpec
from ift.tasks.task import Demonstrations, Task

__all__ = ["Demonstrations", "Task", "TaskError", "TaskSpec", "list_tasks", "load_task"]
