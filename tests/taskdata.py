"""Task data for the tasks tests: one split file in the hub's column schema, and a tiny three-colour task."""
import json
from pathlib import Path

import datasets
import pandas as pd

from ift.tasks import load_task


def write_split(root: Path, folder: str, split: str, rows: list[dict], fmt: str = "jsonl") -> Path:
    """One split file in the hub's column schema, as the local-directory source expects it."""
    path = root / folder / f"{split}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


WORDS = ["red", "green", "blue"]


def colour_rows(n: int, start: int = 0) -> list[dict]:
    return [{"text": f"item {start + i}", "label": i % 3} for i in range(n)]


def colour_task(root: Path, **overrides):
    spec = {"name": "colours", "template": "Item: {text}\nColour:", "label_words": WORDS,
            "eval_split": "test", "demo_split": "train", "data_dir": str(root), **overrides}
    return load_task(spec)
