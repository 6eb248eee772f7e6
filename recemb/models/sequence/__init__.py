"""Sequence model: a causal Transformer user tower trained on every position of every session.

SASRec-style self-attention over the last ``max_length`` items (Kang &
McAuley 2018) with position and time-gap embeddings, item embeddings tied
between input and output, a full (or sampled) softmax over the catalogue at
every position, and a RepeatNet-style repeat path (Ren et al. 2019) for the
re-clicks that make up a quarter of next clicks in e-commerce logs.

Layout, one job per module:

- :mod:`.config`   ``SequenceConfig``, the ``sequence:`` section of a pipeline YAML
- :mod:`.windows`  canonical events -> sequences -> padded training windows (every
                   target exactly once) and query windows; time-gap buckets
- :mod:`.net`      ``SequenceNet``: causal blocks, tied item table, explore / repeat paths
- :mod:`.epochs`   ``SequenceTrainer``: the one epoch loop (seeded per epoch: exact resume)
- :mod:`.fit`      ``fit_sequence``: windows, this worker's share, DDP, resume, checkpoints
- :mod:`.model`    ``SequenceModel``: fit, item vectors, queries, scores, save / load

Training on Ray Train (``train_loop``, the driver) is in :mod:`recemb.train.sequence`.
"""
