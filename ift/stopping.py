"""Early stopping on a dev score: kept for imports; the rules live in ift/protocol.py."""
from ift.protocol import EarlyStopping, stop_step

__all__ = ["EarlyStopping", "stop_step"]
