"""Annoy-backed approximate index (DESIGN.md §6, §9).

Annoy is fast and its files are mmap-shared between processes, but it checks
nothing: a wrong dimension or metric crashes the process, and ids must be
dense. This wrapper only ever gives Annoy rows ``0..N-1`` and float32
``[*, D]`` vectors of the right ``D``; the file-level checks that make
loading safe live in :mod:`recemb.index.export` (:func:`check_annoy_file`).

``import annoy`` (not ``from annoy import AnnoyIndex``): Ray pickles modules
by reference and the ``from`` form fails there (DESIGN.md §9).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import annoy
import numpy as np

from recemb.index.base import Index, RecembIndexError, check_vectors

#: recemb metric -> Annoy metric. Cosine is Annoy's "angular" (sqrt(2 - 2 cos)).
AnnoyMetric = Literal["angular", "dot", "euclidean"]
ANNOY_METRIC: dict[str, AnnoyMetric] = {"cosine": "angular", "dot": "dot", "euclidean": "euclidean"}
#: Bytes before the vector in one Annoy node (annoylib.h, S = int32, T = float32):
#: angular {n_descendants, children[2]}, dot {n_descendants, children[2], dot_factor},
#: euclidean {n_descendants, a, children[2]}. Measured on annoy 1.17.3.
NODE_HEADER_BYTES = {"angular": 12, "dot": 16, "euclidean": 16}


def node_bytes(annoy_metric: str, dim: int) -> int:
    """Size in bytes of one node of an Annoy file of ``dim`` float32 dimensions."""
    return NODE_HEADER_BYTES[annoy_metric] + 4 * dim


class AnnoyIndex(Index):
    """Approximate top-k with Annoy random-projection forests.

    Args:
        metric: cosine (Annoy angular), dot or euclidean.
        n_trees: more trees = better recall, bigger file, slower build.
        search_k: nodes inspected per query; ``-1`` = ``search_k_factor * n_trees * k``
            (Annoy's default with factor 1). Larger = better recall, slower queries.
        search_k_factor: the multiple of ``n_trees * k`` inspected when ``search_k`` is -1
            (a recall-certified export records it, recemb.index.export).
        n_jobs: threads for :meth:`build` (``-1`` = all cores).
        seed: Annoy's RNG seed (the forest is reproducible with ``n_jobs=1``).
        threads: threads for a batch :meth:`search` (Annoy releases the GIL).
    """

    is_exact = False

    def __init__(
        self,
        metric: str = "cosine",
        n_trees: int = 50,
        search_k: int = -1,
        n_jobs: int = -1,
        seed: int = 0,
        threads: int = 1,
        search_k_factor: float = 1.0,
    ):
        super().__init__(metric)
        if n_trees < 1:
            raise RecembIndexError(f"n_trees must be >= 1, got {n_trees}")
        self.n_trees = int(n_trees)
        self.search_k = int(search_k)
        if search_k_factor <= 0:
            raise RecembIndexError(f"search_k_factor must be > 0, got {search_k_factor}")
        self.search_k_factor = float(search_k_factor)
        self.n_jobs = int(n_jobs)
        self.seed = int(seed)
        self.threads = max(1, int(threads))
        self._ann: annoy.AnnoyIndex | None = None

    def effort(self, k: int) -> dict[str, int]:
        """What one query for ``k`` costs in Annoy's terms: the nodes it inspects."""
        if self.search_k != -1:
            return {"search_k": int(self.search_k)}
        return {"search_k": int(round(self.search_k_factor * self.n_trees * k))}

    @property
    def annoy_metric(self) -> AnnoyMetric:
        return ANNOY_METRIC[self.metric]

    def build(self, vectors: np.ndarray, on_disk: str | os.PathLike | None = None) -> AnnoyIndex:
        """Index ``vectors`` ``[N, D]`` (row i = Annoy item i).

        With ``on_disk`` the forest is built straight into that file (Annoy's
        ``on_disk_build``), so RAM holds no second copy of a large index; the
        file is complete and loadable when this returns.
        """
        x = check_vectors(vectors, "AnnoyIndex.build")
        n, d = x.shape
        ann = annoy.AnnoyIndex(int(d), self.annoy_metric)
        ann.set_seed(self.seed)
        if on_disk is not None:
            ann.on_disk_build(str(on_disk))
        # One Python call per item is Annoy's only way in; slice in blocks so a
        # memmap is paged in sequentially rather than all at once.
        for start in range(0, n, 65536):
            block = np.asarray(x[start : start + 65536], dtype=np.float32)
            for i, row in enumerate(block):
                ann.add_item(start + i, row)
        ann.build(self.n_trees, n_jobs=self.n_jobs)
        self._ann, self._count, self._dim = ann, int(n), int(d)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the forest to ``path`` (not needed after an on-disk build to that path)."""
        self._require().save(str(path))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        dim: int,
        count: int,
        metric: str = "cosine",
        n_trees: int = 50,
        search_k: int = -1,
        threads: int = 1,
        prefault: bool = False,
        search_k_factor: float = 1.0,
    ) -> AnnoyIndex:
        """mmap an Annoy file. UNSAFE on an unchecked file: use :func:`recemb.index.export.load_index`.

        The caller vouches that ``path`` is an Annoy file of ``dim``, ``metric``
        and ``count`` items (Annoy segfaults otherwise).
        """
        self = cls(metric=metric, n_trees=n_trees, search_k=search_k, threads=threads, search_k_factor=search_k_factor)
        ann = annoy.AnnoyIndex(int(dim), self.annoy_metric)
        ann.load(str(Path(path)), prefault)
        if ann.get_n_items() != count:
            ann.unload()
            raise RecembIndexError(f"{path}: holds {ann.get_n_items()} items, expected {count}")
        self._ann, self._count, self._dim = ann, int(count), int(dim)
        return self

    def unload(self) -> None:
        """Release the mmap (the object is empty afterwards)."""
        if self._ann is not None:
            self._ann.unload()
        self._ann, self._count, self._dim = None, 0, None

    def _require(self) -> annoy.AnnoyIndex:
        if self._ann is None:
            raise RecembIndexError("AnnoyIndex is empty: call build(vectors) or load it first")
        return self._ann

    def _search(self, queries: np.ndarray, k: int, rows: np.ndarray, scores: np.ndarray) -> None:
        ann, search_k = self._require(), self.effort(k)["search_k"]

        def one(i: int) -> None:
            r, dist = ann.get_nns_by_vector(queries[i], k, search_k, True)
            m = len(r)
            rows[i, :m] = r
            scores[i, :m] = dist

        # Annoy answers one vector per call; the loop is per query, not per item.
        if self.threads > 1 and queries.shape[0] > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(one, range(queries.shape[0])))
        else:
            for i in range(queries.shape[0]):
                one(i)
        valid = rows[:, :k] >= 0
        s = scores[:, :k]
        if self.metric == "cosine":
            # Annoy's angular distance is sqrt(2 - 2 cos) between unit vectors.
            s[valid] = 1.0 - 0.5 * s[valid] ** 2
        elif self.metric == "euclidean":
            s[valid] = -s[valid]
        # dot: Annoy already returns the dot product.
