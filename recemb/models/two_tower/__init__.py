"""Two-tower user-item retrieval model (Covington 2016; Yi et al. 2019) on torchrec.

Layout, one job per module:

- :mod:`.config`      ``TwoTowerConfig``, the ``two_tower:`` section of a pipeline YAML
- :mod:`.features`    canonical tables -> vocabularies, training examples, jagged
                      batches (the only place a KeyedJaggedTensor is built)
- :mod:`.content`     the item tower's content parts (text tokens, image, sentence) and their fusion
- :mod:`.towers`      UserTower / ItemTower (L2-normalised ``[B, D]``)
- :mod:`.task`        RetrievalTask: in-batch softmax, logQ, accidental hits, mixed negatives
- :mod:`.distributed` DistributedModelParallel + fused RowWiseAdagrad, or plain torch
- :mod:`.encode`      plain towers -> vectors, EmbeddingSets, the user tower export
- :mod:`.model`       ``TwoTower``: fit, EmbeddingSets, user tower export / load

Training (the epoch loop, checkpoints, ``train_loop``, the driver) is in
:mod:`recemb.train.two_tower`.
"""
