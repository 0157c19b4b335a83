"""Tiny random models and a tiny trained tokenizer, built offline in about a second.

Shared by the whole test suite: `tiny_lm("llama")` returns an `ift.models.LoadedModel`-compatible
pair, `save_tiny_model(dir, "llama")` writes an HF directory that `load_model(dir)` can read.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

ARCHS = ["llama", "gpt2", "opt", "gpt_neox", "qwen2", "gemma3", "bloom"]

_CORPUS = [
    "Review: a gripping, funny and warm film\nSentiment: positive",
    "Review: dull, slow and far too long\nSentiment: negative",
    "Question: Who wrote the novel?\nType: Person",
    "Question: How many legs does a spider have?\nType: Number",
    "Article: The team won the final match.\nCategory: Sports",
    "The man broke his toe because he dropped a hammer on his foot.",
    "The weather was cold, therefore she wore a coat.",
] * 4


@functools.lru_cache(maxsize=1)
def _tokenizer_object() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return tok


def make_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style: leading spaces belong to the next word).

    No pad token on purpose: the engine must cope with tokenizers that lack one.
    """
    from tokenizers import processors

    obj = Tokenizer.from_str(_tokenizer_object().to_str())
    if add_bos:
        obj.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", obj.token_to_id("<|bos|>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=obj, bos_token="<|bos|>", eos_token="<|eos|>")


def tiny_config(arch: str, vocab_size: int = 400, **overrides):
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=512, **common)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=512, **common)
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                               sliding_window=256, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    elif arch == "opt":
        cfg = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                        word_embed_proj_dim=32, max_position_embeddings=512, **common)
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=512, **common)
    elif arch == "bloom":
        cfg = BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    model.eval()
    return model


def save_tiny_model(directory, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write an HF-format directory (weights + config + tokenizer) for path-based loading tests."""
    directory = Path(directory)
    make_tiny_model(arch, seed, **overrides).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory
