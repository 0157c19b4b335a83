"""Will the demonstrations and examples fit the model? Checked before tuning or scoring does any work.

A GPT-2/OPT model fed positions past its table fails deep inside with an IndexError; a rotary model
(Llama) runs on silently with positions it never saw; a sliding-window model (Gemma 3) silently drops
the start of the prefix. `check_lengths` turns all three into one clear error up front.
"""
from __future__ import annotations

from collections.abc import Sequence

from ift.cache import fit_check
from ift.example import Example
from ift.scorer import continuation_ids


def longest_example(tok, examples: Sequence[Example]) -> tuple[int, int, int]:
    """(query tokens, answer tokens, example index) of the longest candidate; each context tokenised once."""
    best, ctx_ids = (0, 0, -1), {}
    for ex in examples:
        for ctx, cont in zip(ex.contexts, ex.continuations):
            if ctx not in ctx_ids:
                ctx_ids[ctx] = tok(ctx, add_special_tokens=False).input_ids
            q = len(ctx_ids[ctx])
            a = len(continuation_ids(tok, ctx, cont, ctx_ids[ctx]))
            if q + a > best[0] + best[1]:
                best = (q, a, ex.index)
    return best


def check_lengths(lm, demo_text: str | None, examples: Sequence[Example] = (), T: int = 1,
                  position_mode: str = "continue") -> dict:
    """Raise ValueError (lengths, limit, what to do) unless the demonstrations plus the longest example fit
    the model's maximum positions and sliding window, and tuning for T steps does too (in "continue" mode
    the re-read sits at positions L..2L-1). Returns the lengths. Call it before tuning starts; the tuner
    and the scorer also call it for what they are given."""
    tok = lm.tokenizer
    demo = len(tok(demo_text or "", add_special_tokens=True).input_ids)
    query, answer, index = longest_example(tok, examples)
    return fit_check(lm.model, demo, query, answer, T, position_mode, index)


def fitting_prefixes(lm, demo_texts: Sequence[str], examples: Sequence[Example] = ()) -> tuple[int, str | None]:
    """(how many of `demo_texts`, each longer than the last, fit with the longest example; why the next one does
    not, or None): a method with one prefix per step runs the steps that fit and records the cap."""
    query, answer, index = longest_example(lm.tokenizer, examples)
    for n, text in enumerate(demo_texts):
        demo = len(lm.tokenizer(text, add_special_tokens=True).input_ids)
        try:
            fit_check(lm.model, demo, query, answer, 1, "continue", index)
        except ValueError as err:
            return n, str(err)
    return len(demo_texts), None
