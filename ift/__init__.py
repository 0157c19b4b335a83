"""ift: Iterative Forward Tuning of in-context learning (arXiv 2305.13016).

The engine is plain Python: load a model, tune a demonstration prefix by forward passes, score
multiple-choice examples. Hydra, wandb and submitit live only in the experiment layer (launch.py).
"""
from ift.example import Example

__all__ = ["Example"]
