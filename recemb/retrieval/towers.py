"""User towers as query encoders: the online service's and the batch candidate job's.

``serve.user_tower.model`` / ``candidates.user_tower`` pick one: ``two_tower``
loads ``<run>/two_tower/user_tower/`` (a state dict + config JSON),
``sequence`` the saved sequence model ``<run>/sequence/`` (weights + item
vocabulary), each once, with ``torch.load(..., weights_only=True)``, by the
model's own loader, and queried through a tiny contract so that retrieval
never depends on the tower's internals::

    class UserTowerQuery(Protocol):
        source: str                       # the index it queries, e.g. "two_tower"
        def encode(self, histories: list[list[str]],
                   user_ids: list[str | None]) -> np.ndarray: ...   # [B, D] float32
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from recemb.errors import RecembError

log = logging.getLogger(__name__)

#: model -> (its directory under the run, (module, loader name)); the loader maps the
#: directory to an object with ``encode(histories) -> [B, D]`` (torch.load(weights_only=True)).
TOWERS = {
    "two_tower": (Path("two_tower") / "user_tower", ("recemb.models.two_tower", "load_user_tower")),
    "sequence": (Path("sequence"), ("recemb.models.sequence.model", "load_sequence_tower")),
}

#: ``await query(history, user_id) -> [D]``: one request's query vector.
TowerQueryFn = Callable[[Sequence[str], "str | None"], Awaitable[np.ndarray]]


@runtime_checkable
class UserTowerQuery(Protocol):
    source: str

    def encode(self, histories: list[list[str]], user_ids: list[str | None]) -> np.ndarray:
        """``B`` histories (oldest first) and user ids -> query vectors ``[B, D]`` float32."""


def find_user_tower(run_dir: str | Path, model: str = "two_tower") -> Path | None:
    """The saved tower of ``model`` under ``run_dir`` (e.g. ``<run>/two_tower/user_tower/``), else None."""
    d = Path(run_dir) / TOWERS[model][0]
    return d if d.is_dir() else None


def _loader(model: str):
    """``model``'s loader: ``dir -> object with encode(histories) -> [B, D]``."""
    module, name = TOWERS[model][1]
    return getattr(importlib.import_module(module), name)


class TowerQuery:
    """Adapter from a model's loaded tower (``encode(histories)``) to :class:`UserTowerQuery`.

    The towers encode recent items only (user ids are not among their inputs
    yet), so ``user_ids`` are accepted and ignored.
    """

    def __init__(self, model, source: str):
        self.model = model
        self.source = source

    def encode(self, histories: list[list[str]], user_ids: list[str | None]) -> np.ndarray:
        return self.model.encode(histories)


def load_user_tower(run_dir: str | Path, source: str | None = None, model: str = "two_tower") -> UserTowerQuery | None:
    """Load ``model``'s tower from the run once, or None when the run has none (or no loader exists).

    ``source``: the index its query vectors search (default: the model's own item index).
    """
    d = find_user_tower(run_dir, model)
    if d is None:
        return None
    try:
        loader = _loader(model)
    except (ImportError, AttributeError):
        log.warning("%s exists but %s.%s is not available; serving without the user tower", d, *TOWERS[model][1])
        return None
    return TowerQuery(loader(d), source or model)


def check_batch(out: np.ndarray, b: int, where: str) -> np.ndarray:
    """``out`` as float32 ``[b, D]``; raises naming ``where`` on a wrong shape or NaN."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != b:
        raise RecembError(f"{where}: encode returned shape {out.shape}, expected [{b}, D]")
    if not np.isfinite(out).all():
        raise RecembError(f"{where}: encode returned NaN or inf")
    return out
