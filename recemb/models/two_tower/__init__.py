"""Two-tower user-item retrieval model (Covington 2016; Yi et al. 2019) on torchrec.

Layout, one job per module:

- :mod:`.config`      ``TwoTowerConfig``, the ``two_tower:`` section of a pipeline YAML
- :mod:`.features`    canonical tables -> vocabularies, training examples, jagged
                      batches (the only place a KeyedJaggedTensor is built)
- :mod:`.towers`      UserTower / ItemTower (L2-normalised ``[B, D]``), content hook
- :mod:`.task`        RetrievalTask: in-batch softmax, logQ, accidental hits, mixed negatives
- :mod:`.distributed` DistributedModelParallel + fused RowWiseAdagrad, or plain torch
- :mod:`.encode`      plain towers -> vectors, EmbeddingSets, the user tower export
- :mod:`.model`       ``TwoTower``: fit, EmbeddingSets, user tower export / load

Training (the epoch loop, checkpoints, ``train_loop``, the driver) is in
:mod:`recemb.train.two_tower`.
"""

from recemb.models.two_tower.config import TwoTowerConfig

__all__ = ["TwoTower", "TwoTowerConfig", "load_user_tower", "UserTowerModel"]

# Importing torch (and, when training, torchrec) is slow: load on first use so
# that reading a config (every CLI start) stays fast.
from recemb.lazy import lazy_exports  # noqa: E402

_LAZY = {
    "TwoTower": "model",
    "load_user_tower": "model",
    "UserTowerModel": "model",
}


__getattr__ = lazy_exports(__name__, _LAZY)
