"""The user tower as an online query encoder, with request batching.

The tower is the one piece of the online path that needs torch (DESIGN.md §1);
it is loaded by :mod:`recemb.retrieval.towers` (``serve.user_tower.model``).
Requests are batched: :class:`MicroBatcher` (uvicorn, asyncio) or
``@serve.batch`` (Ray Serve, serving/serve_app.py) gathers concurrent
requests for up to ``batch_wait_ms`` / ``max_batch_size`` into one
``encode`` call, which runs off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from recemb.retrieval.towers import TowerQueryFn, UserTowerQuery, check_batch, load_user_tower

__all__ = ["MicroBatcher", "TowerQueryFn", "UserTowerQuery", "check_batch", "load_user_tower"]


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
