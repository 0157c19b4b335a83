"""ift: Iterative Forward Tuning of in-context learning (arXiv 2305.13016).

The engine is plain Python: load a model, tune a demonstration prefix by forward passes, score
multiple-choice examples. Hydra, wandb and submitit live only in the experiment layer (launch.py).

    lm = ift.load_model("bundled")
    for prefix in ift.ForwardTuner(lm).steps(demo_text, T=5):  # the paper's setting (ift.settings.PAPER)
        scores = ift.score_examples(lm, examples, prefix=prefix)
"""
from ift.example import Example
from ift.lengths import check_lengths
from ift.models import LoadedModel, from_objects, load_model
from ift.prefix import TunedPrefix
from ift.scorer import ExampleScore, accuracy, score_examples
from ift.tuner import ForwardTuner

__all__ = ["Example", "ExampleScore", "ForwardTuner", "LoadedModel", "TunedPrefix", "accuracy",
           "check_lengths", "from_objects", "load_model", "score_examples"]
from ift.baselines import icl_prefix, repeat_demonstrations  # noqa: E402
from ift.gradient import GradientTuner, pseudo_gradient_cosine  # noqa: E402
from ift.protocol import EarlyStopping  # noqa: E402

__all__ += ["EarlyStopping", "GradientTuner", "icl_prefix", "pseudo_gradient_cosine", "repeat_demonstrations"]
