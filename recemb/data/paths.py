"""Where data lives: the read-only shared data folder and the dataset cards."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Root of local copies of public datasets: ``$RECEMB_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("RECEMB_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def cards_dir() -> Path:
    """Folder of dataset cards (``datasets/*.yaml``): ``$RECEMB_CARDS_DIR``, else ``<repo>/datasets``."""
    env = os.environ.get("RECEMB_CARDS_DIR")
    return Path(env) if env else REPO_ROOT / "datasets"
