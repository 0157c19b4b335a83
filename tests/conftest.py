import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from taskdata import colour_rows, write_split  # noqa: E402

import ift  # noqa: E402
from tiny import make_tiny_model, make_tokenizer, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved in HF format, for tests that load a model by path (read only)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tinyllama", "llama")


@pytest.fixture
def fresh_model_cache():
    """Jobs load their model through a per-process cache; a test that counts or breaks loads starts empty."""
    from ift.experiment import job
    job.load_model_once.cache_clear()
    yield
    job.load_model_once.cache_clear()


@pytest.fixture
def tiny_lm():
    """A factory: tiny_lm("gpt2", seed=1) -> LoadedModel on CPU in fp32."""
    def build(arch: str = "llama", seed: int = 0, **overrides):
        return ift.from_objects(make_tiny_model(arch, seed, **overrides), make_tokenizer(), f"tiny-{arch}-{seed}")
    return build


DEMOS = ("Review: a gripping and warm film\nSentiment: positive\n\n"
         "Review: dull and far too long\nSentiment: negative\n\n")


@pytest.fixture
def demos():
    return DEMOS


@pytest.fixture
def examples():
    """Single- and multi-token candidates, unequal query lengths, and per-candidate contexts."""
    E = ift.Example
    return [
        E.shared("Review: funny\nSentiment:", [" positive", " negative"], 0, 0),
        E.shared("Review: a slow, dull and tiring story\nSentiment:", [" positive", " negative", " very mixed"], 1, 1),
        E.shared("Question: Who wrote the novel?\nType:", [" Person", " Number", " Location of the event"], 0, 2),
        E(("The man broke his toe because he", "The man broke his toe therefore he"), (" fell.", " fell."), 0, 3),
        E.shared("Review: warm\nSentiment:", [" positive", " the", " a"], 0, 4),
    ]


@pytest.fixture
def colours(tmp_path):
    """A directory with the colours task's train (60 rows) and test (30) splits (taskdata.colour_task)."""
    write_split(tmp_path, "colours", "train", colour_rows(60))
    write_split(tmp_path, "colours", "test", colour_rows(30, start=100))
    return tmp_path
