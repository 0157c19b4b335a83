"""Where the tests find the local benchmark mirror (IFT_DATA_DIR, else ../shared/data beside the checkout), and the
mark that skips a test on a clone without it: one place, so every mirror test skips (never fails) the same way."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IFT_DATA_DIR", ROOT.parent / "shared" / "data"))


def needs_mirror(*tasks: str):
    """Skip unless the mirror holds every one of `tasks` (its folder names: "sst2", "obqa")."""
    missing = [t for t in tasks if not (DATA / t).is_dir()]
    return pytest.mark.skipif(bool(missing), reason=f"no mirror of {', '.join(missing)} at {DATA} (IFT_DATA_DIR)")
