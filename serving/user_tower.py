"""The two-tower user tower as an online query encoder, with request batching.

The tower is the one piece of the online path that needs torch (DESIGN.md §1).
``serve.user_tower.model`` picks it: ``two_tower`` loads
``<run>/two_tower/user_tower/`` (a state dict + config JSON), ``sequence``
the saved sequence model ``<run>/sequence/`` (weights + item vocabulary),
each once, with ``torch.load(..., weights_only=True)``, by the model's own
loader, and queried through a tiny contract so that serving never depends on
the tower's internals::

    class UserTowerQuery(Protocol):
        source: str                       # the index it queries, e.g. "two_tower"
        def encode(self, histories: list[list[str]],
                   user_ids: list[str | None]) -> np.ndarray: ...   # [B, D] float32

Requests are batched: :class:`MicroBatcher` (uvicorn, asyncio) or
``@serve.batch`` (Ray Serve, serving/serve_app.py) gathers concurrent
requests for up to ``batch_wait_ms`` / ``max_batch_size`` into one
``encode`` call, which runs off the event loop.
"""

from __future__ import annotations

import asyncio
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


class MicroBatcher:
    """Gathers concurrent ``await batcher(history, user_id)`` calls into one ``encode`` call.

    The first request of a batch waits at most ``wait_ms`` for others (or
    until ``max_batch_size`` are queued); ``encode`` then runs in the default
    thread pool so the event loop keeps accepting requests meanwhile.
    """

    def __init__(self, tower: UserTowerQuery, max_batch_size: int = 32, wait_ms: float = 2.0):
        self.tower = tower
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self._queue: list[tuple[list[str], str | None, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the batches run (tests, metrics)

    async def __call__(self, history: Sequence[str], user_id: str | None) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((list(history), user_id, fut))
        if len(self._queue) >= self.max_batch_size:
            self._flush_now()
        elif self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_later())
        return await fut

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.wait_s)
        self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
        if self._queue and self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_later())
        if batch:
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch) -> None:
        self.batches.append(len(batch))
        histories, users = [b[0] for b in batch], [b[1] for b in batch]
        try:
            out = await asyncio.get_running_loop().run_in_executor(None, self.tower.encode, histories, users)
            out = check_batch(out, len(batch), type(self.tower).__name__)
        except Exception as e:  # every waiter gets the error, none hangs
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for i, (*_, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result(out[i])
