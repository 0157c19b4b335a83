"""The unit of evaluation that tasks produce and the scorer consumes."""
from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "\n\n"  # between demonstrations, and after the last one (a query follows it directly)


@dataclass(frozen=True)
class Example:
    """One multiple-choice item.

    Every candidate is a (context, continuation) pair; only the continuation's tokens are scored.
    Contexts are usually identical (the scorer then runs the query once for all candidates);
    WinoGrande-style tasks give each candidate its own context and a shared continuation.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int = -1  # index of the correct candidate, -1 when unlabelled
    index: int = -1  # row number in the source split, for auditing

    def __post_init__(self):
        if len(self.contexts) != len(self.continuations):
            raise ValueError(
                f"Example {self.index}: {len(self.contexts)} contexts but {len(self.continuations)} continuations"
            )
        if not self.continuations:
            raise ValueError(f"Example {self.index}: empty candidate list (no continuations to score)")
        if self.gold >= len(self.continuations):
            raise ValueError(f"Example {self.index}: gold={self.gold} but only {len(self.continuations)} candidates")

    @classmethod
    def shared(cls, context: str, continuations, gold: int = -1, index: int = -1) -> Example:
        """The common case: one context, several candidate continuations."""
        conts = tuple(continuations)
        return cls((context,) * len(conts), conts, gold, index)

    @property
    def demonstration(self) -> str:
        """The text of this example used as a demonstration: its context completed by the gold answer."""
        if self.gold < 0:
            raise ValueError(f"Example {self.index} is unlabelled and cannot serve as a demonstration")
        return self.contexts[self.gold] + self.continuations[self.gold]
